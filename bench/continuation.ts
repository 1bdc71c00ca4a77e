/**
 * `npm run bench -- --only=continuation`: the gap a client sees when the node serving its stream
 * goes away mid-generation and the job continues on another (docs/continuation.md). Real parts:
 * a coordinator, two `sharedllm node start` daemons (llama-server on the default model), each its
 * own process group. Each trial streams a greedy chat and, after `cutAt` tokens, either SIGKILLs
 * the serving node's process group (a power cut) or makes it yield (`sharedllm node pause`, as
 * its owner would: it hands its job off). The gap is the client's: from the cut to the next
 * token. Beside it, the continuing engine's cost of taking the output so far again, measured on
 * a llama-server of the same build: as one batch, and replayed token by token (what a greedy
 * job does, so its text stays the uninterrupted one).
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { DEFAULT_MODEL, ensureEngine, ModelStore, resolvePaths, startLlamaServer } from "@sharedllm/node";
import { waitFor } from "@sharedllm/testkit";
import { type NodeProcess, startNodeProcess } from "@sharedllm/testkit/nodeProcess";
import pino from "pino";
import { median } from "./coordinator.ts";

const MESSAGES = [{ role: "user", content: "Write a short story about a lighthouse keeper and a storm." }];

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))] as number;
}

export async function benchContinuation(o: { trials: number; cutAt: number; maxTokens: number }) {
  const joinToken = randomBytes(32).toString("base64url");
  const dataDir = await mkdtemp(join(tmpdir(), "sharedllm-bench-cont-"));
  const coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, dataDir, joinToken, logger: pino({ level: "silent" }) });
  const apiKey = (await createApiKey(coordinator.db, "bench")).secret;
  const daemons = new Map<string, NodeProcess>();
  const gone: NodeProcess[] = [];

  const start = async (): Promise<NodeProcess> => {
    const d = await startNodeProcess({ coordinatorUrl: coordinator.url, joinToken, args: ["--slots", "1", "--no-owner-first"] });
    daemons.set(d.id, d);
    await waitFor("the node taking jobs", () => coordinator.fleet.get(d.id)?.accepting, 30_000);
    return d;
  };
  const setAccepting = async (d: NodeProcess, accepting: boolean) => {
    await d.tell(accepting ? "resume" : "pause");
    await waitFor("the node's availability", () => coordinator.fleet.get(d.id)?.accepting === accepting, 30_000);
  };
  /** A fresh node's first requests are slow (cold caches): it serves two while the others stand aside. */
  const warm = async (fresh: NodeProcess) => {
    const others = [...daemons.values()].filter((d) => d !== fresh);
    for (const d of others) await setAccepting(d, false);
    for (let i = 0; i < 2; i++) await streamCut(coordinator.url, apiKey, { cutAt: 0, maxTokens: 8 }, () => {});
    for (const d of others) await setAccepting(d, true);
  };
  const kill = (d: NodeProcess) => {
    void d.kill();
    daemons.delete(d.id);
    gone.push(d);
  };

  const gaps: Record<"kill" | "yield", number[]> = { kill: [], yield: [] };
  let sameText = true;
  let reference: string | undefined;
  try {
    const first = await Promise.all([start(), start()]);
    for (const d of first) await warm(d);
    reference = (await streamCut(coordinator.url, apiKey, o, () => {})).text;
    for (let i = 0; i < o.trials * 2; i++) {
      const how = i % 2 ? "yield" : "kill";
      let cutAt = 0;
      let victim: NodeProcess | undefined;
      const r = await streamCut(coordinator.url, apiKey, o, (node) => {
        victim = daemons.get(node);
        if (!victim) throw new Error(`no daemon for ${node}`);
        cutAt = performance.now();
        if (how === "kill") kill(victim);
        else void victim.tell("pause");
      });
      if (!r.resumedAt) throw new Error(`trial ${i}: the stream did not continue: ${JSON.stringify(r)}`);
      gaps[how].push(r.resumedAt - cutAt);
      sameText &&= r.text === reference;
      if (how === "kill") await warm(await start());
      else if (victim) await setAccepting(victim, true);
    }
  } finally {
    for (const d of [...daemons.values(), ...gone]) await d.cleanup();
    await coordinator.close();
    await rm(dataDir, { recursive: true, force: true });
  }
  const engine = await engineCost(o.cutAt);
  const stats = (xs: number[]) => ({ p50Ms: median(xs), p95Ms: percentile(xs, 0.95), trials: xs.length });
  return { cutAt: o.cutAt, maxTokens: o.maxTokens, kill: stats(gaps.kill), yield: stats(gaps.yield), engine, sameText };
}

/**
 * Streams the bench request; after `cutAt` content events calls `cut` with the serving node, and
 * notes when the next content event arrives.
 */
function streamCut(
  url: string,
  apiKey: string,
  o: { cutAt: number; maxTokens: number },
  cut: (node: string) => void,
): Promise<{ text: string; resumedAt: number | undefined }> {
  const payload = JSON.stringify({ model: DEFAULT_MODEL.id, messages: MESSAGES, max_tokens: o.maxTokens, temperature: 0, stream: true });
  return new Promise((resolve, reject) => {
    const req = request(`${url}/v1/chat/completions`, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}`, "content-length": Buffer.byteLength(payload) },
    });
    req.once("error", reject);
    req.once("response", (res) => {
      res.setEncoding("utf8");
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
      const node = String(res.headers["x-sharedllm-node"]);
      let text = "";
      let buf = "";
      let n = 0;
      let resumedAt: number | undefined;
      let failed: string | undefined;
      res.on("data", (s: string) => {
        const now = performance.now();
        buf += s;
        let end = buf.indexOf("\n\n");
        while (end >= 0) {
          const event = buf.slice(0, end);
          buf = buf.slice(end + 2);
          end = buf.indexOf("\n\n");
          if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
          const parsed = JSON.parse(event.slice(6)) as { choices?: { delta?: { content?: string } }[]; error?: { message: string } };
          if (parsed.error) failed = parsed.error.message;
          const content = parsed.choices?.[0]?.delta?.content;
          if (!content) continue;
          text += content;
          n++;
          if (n === o.cutAt) cut(node);
          else if (n === o.cutAt + 1) resumedAt = now;
        }
      });
      res.once("error", reject);
      res.once("end", () => (failed ? reject(new Error(`the stream failed: ${failed}`)) : resolve({ text, resumedAt })));
    });
    req.end(payload);
  });
}

/** What taking `tokens` of output again costs a llama-server of this build: as one batch, and one at a time. */
async function engineCost(tokens: number) {
  const { cache } = resolvePaths();
  const engine = await ensureEngine({ cache });
  const store = new ModelStore(cache);
  const model = await store.pull("default");
  const logDir = await mkdtemp(join(tmpdir(), "sharedllm-bench-engine-"));
  const llama = await startLlamaServer({
    engine,
    modelPath: store.blobPath(model.sha256),
    modelId: DEFAULT_MODEL.id,
    slots: 1,
    contextPerSlot: 4096,
    logDir,
  });
  const post = async (path: string, body: object) =>
    (await (
      await fetch(`${llama.url}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${llama.apiKey}` },
        body: JSON.stringify(body),
      })
    ).json()) as Record<string, unknown>;
  try {
    const prompt = (await post("/apply-template", { messages: MESSAGES })).prompt as string;
    const head = (await post("/tokenize", { content: prompt, add_special: true, parse_special: true })).tokens as number[];
    const output = ((await post("/completion", { prompt: head, n_predict: tokens, temperature: 0, return_tokens: true })).tokens ??
      []) as number[];
    const batch: number[] = [];
    const replay: number[] = [];
    for (let round = 0; round < 5; round++) {
      // as one batch: the prompt and the output, nothing cached
      const t0 = performance.now();
      await post("/completion", { prompt: [...head, ...output], n_predict: 1, temperature: 0, cache_prompt: false });
      batch.push(performance.now() - t0);
      // replayed: the prompt as a batch, then each output token on its own
      await post("/completion", { prompt: head, n_predict: 1, temperature: 0, cache_prompt: false });
      const t1 = performance.now();
      for (let n = head.length + 1; n <= head.length + output.length; n++) {
        await post("/completion", { prompt: [...head, ...output].slice(0, n), n_predict: 1, temperature: 0, cache_prompt: true });
      }
      replay.push(performance.now() - t1);
    }
    return { promptTokens: head.length, resentTokens: output.length, batchMs: median(batch), replayMs: median(replay) };
  } finally {
    await llama.supervisor.stop();
    await rm(logDir, { recursive: true, force: true });
  }
}
