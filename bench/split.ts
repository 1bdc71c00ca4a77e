/**
 * One model split over two rpc-servers on this machine, three ways, interleaved round by round:
 * raw llama.cpp `--rpc` straight to the rpc-servers (plain TCP, no authentication); through
 * SharedLLM's tunnels (TLS 1.3 both ends, certificates tied to node keys, every byte encrypted and
 * checked in the head's and the worker's processes); and solo (no split). Each arm has its own llama-server and rpc-servers (an rpc-server
 * serves one client at a time), all idle while another arm runs. Also: bytes the head sends to
 * its workers when a cluster forms with cold tensor caches, and again when it re-forms warm.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DEFAULT_MODEL,
  findEngine,
  type LlamaServer,
  ModelStore,
  type RpcServer,
  resolvePaths,
  startLlamaServer,
  startRpcServer,
  TunnelProxy,
  TunnelServer,
  tunnelIdentity,
} from "@sharedllm/node";
import { pino } from "pino";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { median, type StreamTiming, timedRequest, timeStream } from "./coordinator.ts";

/** As a head splits it (splitArgs): the 30 layers over the two members, the output head kept local. */
const SPLIT = ["--tensor-split", "15,16", "--n-gpu-layers", "31", "--override-tensor", "^(output|token_embd)=CPU"];
const head = tunnelIdentity(privateKeyToAccount(generatePrivateKey()));
const log = pino({ level: "silent" });

export async function benchSplit(opts: { rounds: number; maxTokens: number }) {
  const { cache } = resolvePaths();
  const engine = await findEngine(cache);
  const entry = await new ModelStore(cache).get(DEFAULT_MODEL.id);
  if (!engine || !entry) throw new Error("run `sharedllm engine build` and `sharedllm models pull default` first");
  const dir = await mkdtemp(join(tmpdir(), "sharedllm-bench-split-"));
  const stops: (() => Promise<unknown>)[] = [];
  const llama = async (name: string, extraArgs: string[]) => {
    const l = await startLlamaServer({
      engine,
      modelId: DEFAULT_MODEL.id,
      modelPath: new ModelStore(cache).blobPath(entry.sha256),
      slots: 1,
      contextPerSlot: 2048,
      threads: 1,
      logDir: join(dir, name),
      extraArgs,
    });
    stops.push(() => l.supervisor.stop());
    return l;
  };
  const rpcPair = async (name: string, tcp: boolean) => {
    const pair: RpcServer[] = [];
    for (const i of [0, 1]) {
      // a tensor cache of its own, empty at first
      const r = await startRpcServer({
        engine,
        cache: join(dir, `${name}-cache-${i}`),
        logDir: join(dir, `${name}-rpc-${i}`),
        threads: 1,
        tcpPort: tcp ? 0 : undefined,
      });
      stops.push(() => r.stop());
      pair.push(r);
    }
    return pair;
  };
  const tunnels = async (pair: RpcServer[]) => {
    const servers: TunnelServer[] = [];
    const ports: number[] = [];
    for (const r of pair) {
      const worker = tunnelIdentity(privateKeyToAccount(generatePrivateKey()));
      const server = new TunnelServer({ identity: worker, host: "127.0.0.1", port: 0, upstream: r.address, logger: log });
      await server.listen();
      server.addSession({ id: "bench", head: head.signer.address, expiresAt: Date.now() + 3_600_000 });
      const proxy = new TunnelProxy(
        { host: "127.0.0.1", port: server.port, sessionId: "bench", identity: head, workerId: worker.signer.address },
        log,
      );
      ports.push(await proxy.listen());
      stops.push(
        () => proxy.close(),
        () => server.close(),
      );
      servers.push(server);
    }
    return { servers, rpc: ["--rpc", ports.map((p) => `127.0.0.1:${p}`).join(",")] };
  };
  try {
    // cluster formation: cold caches, then the same cluster re-formed with warm ones
    const tunnelled = await tunnels(await rpcPair("tunnel", false));
    const sent = () => tunnelled.servers.reduce((s, t) => s + t.stats.bytesIn, 0);
    const cold = await llama("reform-cold", [...tunnelled.rpc, ...SPLIT]);
    await cold.supervisor.stop();
    const coldBytes = await settled(sent);
    const warm = await llama("reform-warm", [...tunnelled.rpc, ...SPLIT]);
    await warm.supervisor.stop();
    const warmBytes = (await settled(sent)) - coldBytes;

    const raw = await rpcPair("raw", true);
    const arms: Record<string, LlamaServer> = {
      raw: await llama("raw", ["--rpc", raw.map((r) => `127.0.0.1:${(r.address as { port: number }).port}`).join(","), ...SPLIT]),
      tunnel: await llama("tunnel", [...tunnelled.rpc, ...SPLIT]),
      solo: await llama("solo", []),
    };
    const body = timedRequest(DEFAULT_MODEL.id, opts.maxTokens);
    for (const l of Object.values(arms)) await timeStream(l.url, l.apiKey, { ...body, max_tokens: 16 });
    const names = Object.keys(arms);
    const runs: Record<string, StreamTiming[]> = Object.fromEntries(names.map((n) => [n, []]));
    for (let r = 0; r < opts.rounds; r++) {
      for (let i = 0; i < names.length; i++) {
        const name = names[(i + r) % names.length] as string;
        runs[name]?.push(await timeStream((arms[name] as LlamaServer).url, (arms[name] as LlamaServer).apiKey, body));
      }
    }
    const tps = (n: string) => median((runs[n] ?? []).map((t) => t.decodeTps));
    return {
      rounds: opts.rounds,
      maxTokens: opts.maxTokens,
      decodeTps: Object.fromEntries(names.map((n) => [n, tps(n)])),
      tunnelVsRaw: tps("tunnel") / tps("raw"),
      splitVsSolo: tps("tunnel") / tps("solo"),
      rawSplitVsSolo: tps("raw") / tps("solo"),
      sameText: (runs.tunnel?.[0]?.text ?? "a") === (runs.raw?.[0]?.text ?? "b") && runs.raw?.[0]?.text === runs.solo?.[0]?.text,
      reform: { coldBytes, warmBytes },
    };
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

/** The byte count once the relays of closed connections have reported. */
async function settled(read: () => number): Promise<number> {
  let last = -1;
  for (let i = 0; i < 50; i++) {
    const now = read();
    if (now === last && now > 0) return now;
    last = now;
    await new Promise((r) => setTimeout(r, 100));
  }
  return read();
}
