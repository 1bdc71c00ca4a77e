/**
 * One model over three machines: a head and two workers, each in its own network namespace on one
 * bridge, the coordinator in the root namespace. The default model is split over the workers
 * through authenticated RPC tunnels; at temperature 0 it answers exactly as a solo llama-server.
 * The coordinator takes the split only once each worker's signed report of the layers placed on it
 * (read off the RPC stream by its tunnel end) agrees.
 * A worker killed mid-generation: the head re-plans onto the other, and the job continues on the
 * re-formed cluster (the only unit here), so its client sees one unbroken stream. A worker its owner pauses takes no work: the head re-plans without
 * it. Unauthenticated tunnel connections never reach rpc-server.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import net from "node:net";
import { totalmem } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { findEngine, type LlamaServer, ModelStore, startLlamaServer } from "@sharedllm/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { MODEL } from "../system.ts";
import { canUseNetns, type Host, Lan } from "./netns.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");
const PROMPTS = ["Name three colours.", "What is the capital of France?"];

interface Daemon {
  host: Host;
  home: string;
  id: string;
  pid: number;
  tunnelPort?: number;
  /** what the daemon wrote to stderr (warnings and errors) */
  log(): string;
}

let lan: Lan;
let coordinator: Coordinator;
let apiKey: string;
let solo: LlamaServer;
const cleanups: (() => Promise<unknown>)[] = [];
const workers: Daemon[] = [];
let head: Daemon;

async function startDaemon(host: Host, args: string[]): Promise<Daemon> {
  const paths = await tempPaths(`sharedllm-${host.name}-`);
  cleanups.push(paths.cleanup);
  const child = host.spawn(
    process.execPath,
    [
      BIN,
      "node",
      "start",
      "--coordinator",
      `http://${lan.gateway}:${new URL(coordinator.url).port}`,
      "--token",
      joinToken,
      "--threads",
      "1",
      "--no-owner-first",
      ...args,
    ],
    {
      SHAREDLLM_HOME: paths.home,
    },
  );
  let out = "";
  let err = "";
  child.stdout?.on("data", (b) => {
    out += b;
  });
  child.stderr?.on("data", (b) => {
    err += b;
  });
  const line = await waitFor(
    `${host.name} to start`,
    () => {
      if (child.exitCode !== null) throw new Error(`${host.name} exited: ${err}`);
      return /^(?:worker|node) (0x[0-9a-f]{40}) .*?(?:tunnel port (\d+))?/m.exec(out);
    },
    180_000,
    100,
  );
  const tunnelPort = /tunnel port (\d+)/.exec(out)?.[1];
  return {
    host,
    home: paths.home,
    id: line[1] as string,
    pid: child.pid as number,
    tunnelPort: tunnelPort ? Number(tunnelPort) : undefined,
    log: () => err,
  };
}

async function chat(content: string, extra: Record<string, unknown> = {}) {
  const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 24, temperature: 0, ...extra }),
  });
  return {
    status: res.status,
    node: res.headers.get("x-sharedllm-node"),
    body: (await res.json()) as { choices: { message: { content: string } }[] },
  };
}

async function network() {
  const res = await fetch(`${coordinator.url}/v1/network`, { headers: { authorization: `Bearer ${apiKey}` } });
  return (await res.json()) as {
    nodes: {
      id: string;
      role: string;
      status: string;
      accepting: boolean;
      reason: string | null;
      cluster: { nodeId: string; firstLayer: number; layerCount: number; tensorBytes: number }[] | null;
      capacity: { memoryBytes: number } | null;
    }[];
  };
}

/** `sharedllm node pause|resume` for a daemon, as its owner would type it. */
const owner = (d: Daemon, command: "pause" | "resume") =>
  promisify(execFile)(process.execPath, [BIN, "node", command], { env: { ...process.env, SHAREDLLM_HOME: d.home } });

const rpcAccepts = async (d: Daemon) =>
  ((await readFile(join(d.home, "logs", "rpc-server.log"), "utf8").catch(() => "")).match(/Accepted client connection/g) ?? []).length;

// networking and splitting, not storage: the PGlite run covers it (CI runs the suite on both)
describe.skipIf(!canUseNetns() || !!process.env.DATABASE_URL)("a model split over three hosts (network namespaces)", () => {
  beforeAll(async () => {
    lan = new Lan();
    const db = await testDatabase();
    cleanups.push(db.cleanup);
    // a job whose worker dies waits for the cluster to re-form (it holds the only copy of the model here)
    coordinator = await startCoordinator({ host: lan.gateway, port: 0, ...db, joinToken, logger: quietLogger(), continueWaitMs: 60_000 });
    apiKey = (await createApiKey(coordinator.db, "split")).secret;
    const [h, w1, w2] = [await lan.addHost("head"), await lan.addHost("w1"), await lan.addHost("w2")];
    workers.push(await startDaemon(w1, ["--role", "worker"]), await startDaemon(w2, ["--role", "worker"]));
    head = await startDaemon(h, ["--role", "head", "--members", workers.map((w) => w.id).join(","), "--slots", "1"]);
    // the reference: the same model on one llama-server, in the root namespace
    const paths = await tempPaths("sharedllm-solo-");
    cleanups.push(paths.cleanup);
    const engine = await findEngine(paths.cache);
    const store = new ModelStore(paths.cache);
    const entry = await store.get(MODEL);
    if (!engine || !entry) throw new Error("engine or default model missing (the global setup provides them)");
    solo = await startLlamaServer({
      engine,
      modelId: MODEL,
      modelPath: store.blobPath(entry.sha256),
      slots: 1,
      contextPerSlot: 4096,
      threads: 1,
      logDir: paths.home,
    });
  }, 300_000);

  afterAll(async () => {
    await solo?.supervisor.stop();
    await lan?.destroy();
    await coordinator?.close();
    for (const c of cleanups.reverse()) await c();
  }, 60_000);

  it("serves the split model as one virtual node, with temperature-0 text identical to a solo llama-server", async () => {
    // the split counts once the workers' reports are in (they are sent during the head's warm-up)
    const headNode = await waitFor("the head's split to be confirmed", async () =>
      (await network()).nodes.find((n) => n.id === head.id && n.cluster?.length === workers.length),
    ).catch(async () => (await network()).nodes.find((n) => n.id === head.id));
    expect(headNode?.role).toBe("head");
    expect(headNode?.cluster?.map((m) => m.nodeId).sort(), `the head's log:\n${head.log()}`).toEqual(workers.map((w) => w.id).sort());
    expect(headNode?.cluster?.reduce((s, m) => s + m.layerCount, 0)).toBe(30);
    // the coordinator took the split only once each worker's own signed report, read off the RPC
    // stream at its tunnel end, named the same layers: the weights it counted are the same per
    // layer on each (this model's layers are alike)
    const perLayer = headNode?.cluster?.map((m) => m.tensorBytes / m.layerCount) ?? [];
    expect(perLayer[0]).toBeGreaterThan(1_000_000);
    expect(new Set(perLayer).size).toBe(1);
    // one virtual node whose capacity is its machines' together (here: three namespaces of one machine)
    expect(headNode?.capacity?.memoryBytes).toBe(3 * totalmem());
    for (const prompt of PROMPTS) {
      const split = await chat(prompt);
      expect(split.status).toBe(200);
      expect(split.node).toBe(head.id);
      const direct = await fetch(`${solo.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${solo.apiKey}` },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: prompt }], max_tokens: 24, temperature: 0 }),
      }).then((r) => r.json() as Promise<{ choices: { message: { content: string } }[] }>);
      expect(split.body.choices[0]?.message.content).toBe(direct.choices[0]?.message.content);
    }
    // the workers' rpc-servers did the work: each accepted the head's connections
    for (const w of workers) expect(await rpcAccepts(w)).toBeGreaterThan(0);
  });

  it("drops tunnel connections without TLS and the head's key before rpc-server sees them", async () => {
    const w = workers[0] as Daemon;
    const before = await rpcAccepts(w);
    for (const payload of [
      "",
      "hello\n",
      `${JSON.stringify({ session: "x", head: head.id, nonce: "0".repeat(32), mac: "0".repeat(64) })}\n`,
    ]) {
      await new Promise<void>((resolve) => {
        const s = net.connect({ host: w.host.address, port: w.tunnelPort as number });
        s.on("error", () => {});
        s.once("connect", () => s.write(payload));
        s.once("close", () => resolve());
        setTimeout(() => s.destroy(), 7_000).unref();
      });
    }
    expect(await rpcAccepts(w)).toBe(before);
  });

  it("a worker its owner pauses takes no work: the head re-plans without it and serves; resumed, it is available again", async () => {
    const paused = workers[0] as Daemon;
    const other = workers[1] as Daemon;
    await owner(paused, "pause");
    const seen = await waitFor("the coordinator to see the worker paused", async () =>
      (await network()).nodes.find((n) => n.id === paused.id && !n.accepting),
    );
    expect(seen.reason).toBe("paused");
    await waitFor(
      "the head to re-plan without the paused worker",
      async () => {
        const n = (await network()).nodes.find((x) => x.id === head.id);
        return n?.cluster?.length === 1 && n.cluster[0]?.nodeId === other.id;
      },
      90_000,
      200,
    );
    const before = await rpcAccepts(paused);
    const served = await waitFor(
      "a request to succeed on the re-planned cluster",
      async () => {
        const r = await chat(PROMPTS[1] as string);
        return r.status === 200 ? r : undefined;
      },
      60_000,
      500,
    );
    expect(served.node).toBe(head.id);
    expect(await rpcAccepts(paused)).toBe(before);
    await owner(paused, "resume");
    await waitFor(
      "the coordinator to see the worker available",
      async () => (await network()).nodes.find((n) => n.id === paused.id)?.accepting,
    );
  });

  it("a worker killed mid-generation: the head re-plans onto the other, and the job continues there, its stream unbroken", async () => {
    const victim = workers[1] as Daemon;
    const survivor = workers[0] as Daemon;
    const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: "user", content: "Write a long story." }],
        max_tokens: 200,
        stream: true,
      }),
    });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = "";
    while (!text.includes('"content"')) text += new TextDecoder().decode((await reader.read()).value);
    process.kill(-victim.pid, "SIGKILL");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    expect(text).not.toContain('"error"');
    expect(text).toContain("data: [DONE]");
    const job = await coordinator.db
      .selectFrom("jobs")
      .select(["status", "node_id"])
      .orderBy("created_at", "desc")
      .executeTakeFirstOrThrow();
    expect(job).toEqual({ status: "completed", node_id: head.id });
    const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
    expect(metrics).toMatch(/sharedllm_continuations_total\{cause="\w+"\} 1/);
    const replanned = await waitFor(
      "the head to re-plan onto the surviving worker",
      async () => {
        const n = (await network()).nodes.find((x) => x.id === head.id);
        return n?.cluster?.length === 1 && n.cluster[0]?.nodeId === survivor.id ? n : undefined;
      },
      60_000,
      200,
    );
    expect(replanned.cluster?.[0]?.layerCount).toBe(30);
    const after = await waitFor(
      "a request to succeed after the re-plan",
      async () => {
        const r = await chat(PROMPTS[0] as string);
        return r.status === 200 ? r : undefined;
      },
      60_000,
      500,
    );
    expect(after.node).toBe(head.id);
  });
});
