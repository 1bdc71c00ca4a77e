/**
 * What audits cost (docs/verification.md), measured side by side in one run: a serving node (a
 * 1-slot llama-server) generates a job; an auditor scores it at `positions` random positions both
 * ways its runner has: in one pass on its one-pass scorer (what it does: the prompt and the
 * claimed output as batches cut at the audited positions, the same distributions as a replay),
 * and replayed one token at a time on a 1-slot llama-server of its own (what it does without a
 * scorer), in alternating order. From the ratio of auditor work to serving work per audited job
 * follow the share of the network's compute audits take at a rate, and the rate a goal needs:
 * catch a node that cheats on 10% of its jobs within 100 of its jobs with 99% probability.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DEFAULT_MODEL,
  EngineConnections,
  ensureEngine,
  type LlamaServer,
  ModelStore,
  onePassClaim,
  replayClaim,
  resolvePaths,
  Scorer,
  startLlamaServer,
} from "@sharedllm/node";
import { runClaim } from "@sharedllm/testkit/claims";

const PROMPTS = [
  "Write a short story about a lighthouse keeper and a storm.",
  "Explain how bread rises, step by step.",
  "Describe a walk through a forest in autumn.",
  "List the planets of the solar system with one fact about each.",
  "Write a letter to a friend about a trip to the mountains.",
  "Explain why the sky is blue to a ten-year-old.",
];

export interface AuditBench {
  rounds: number;
  maxTokens: number;
  positions: number;
  /** medians over rounds */
  serveMs: number;
  completionTokens: number;
  /** the auditor's time: one pass (what it does), replay (without a scorer) */
  onePassMs: number;
  replayMs: number;
  /** auditor work per audited job relative to serving it: one pass, replay */
  onePassVsServe: number;
  replayVsServe: number;
  /** the share of all compute audits take with the one pass, at the rates the coordinator uses (established 0.5, new and suspect 1) */
  shareAt: Record<string, number>;
  /** the rate the goal needs (every audited cheat caught), and the compute share it costs with the one pass and with replay */
  goal: { rate: number; shareOnePass: number; shareReplay: number };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};

/** The share of compute audits take at audit rate `r` when an audit costs `c` times serving the job. */
export const shareOf = (r: number, c: number) => (r * c) / (1 + r * c);

/** The least audit rate that catches, with probability `p`, a node cheating on share `q` of its jobs within `n` jobs (each audited cheat caught). */
export function rateFor(q: number, n: number, p: number): number {
  return (1 - (1 - p) ** (1 / n)) / q;
}

export async function benchAudit(o: { rounds: number; maxTokens: number; positions: number }): Promise<AuditBench> {
  const { cache } = resolvePaths();
  const engine = await ensureEngine({ cache });
  const store = new ModelStore(cache);
  const model = (await store.get(DEFAULT_MODEL.id)) ?? (await store.pull("default"));
  const logDir = await mkdtemp(join(tmpdir(), "sharedllm-bench-audit-"));
  const servers: LlamaServer[] = [];
  let scorer: Scorer | undefined;
  const serve = async () => {
    const s = await startLlamaServer({
      engine,
      modelId: DEFAULT_MODEL.id,
      modelPath: store.blobPath(model.sha256),
      slots: 1,
      contextPerSlot: 2048,
      threads: 2,
      logDir,
    });
    servers.push(s);
    return { server: s, connections: new EngineConnections(s.port, `Bearer ${s.apiKey}`) };
  };
  const rows: { serveMs: number; tokens: number; onePassMs: number; replayMs: number }[] = [];
  try {
    const node = await serve();
    const auditor = await serve();
    scorer = await Scorer.start({ engine, modelPath: store.blobPath(model.sha256), contextSize: 2048, threads: 2 });
    const onePass = scorer;
    const signal = new AbortController().signal;
    for (let round = -1; round < o.rounds; round++) {
      const request = {
        model: DEFAULT_MODEL.id,
        messages: [{ role: "user", content: PROMPTS[(round + PROMPTS.length) % PROMPTS.length] }],
        temperature: 0,
        max_tokens: o.maxTokens,
        n_predict: o.maxTokens,
      };
      const t0 = performance.now();
      const { claimed } = await runClaim(node.connections, "chat", request);
      const serveMs = performance.now() - t0;
      const positions = [...new Set(Array.from({ length: o.positions }, () => Math.floor(Math.random() * claimed.length)))].sort(
        (a, b) => a - b,
      );
      const claim = { kind: "chat" as const, request, claimed, positions, topK: 100 };
      const timed = async (f: () => Promise<unknown>) => {
        const t = performance.now();
        await f();
        return performance.now() - t;
      };
      const arms = [
        () => timed(() => onePassClaim(claim, auditor.connections, onePass, signal)),
        () => timed(() => replayClaim(claim, auditor.connections, signal)),
      ];
      // alternating order, so that drift hits both alike
      const [first, second] = round % 2 ? [arms[1], arms[0]] : [arms[0], arms[1]];
      const a = await (first as () => Promise<number>)();
      const b = await (second as () => Promise<number>)();
      const [onePassMs, replayMs] = round % 2 ? [b, a] : [a, b];
      // the first round warms the engines up
      if (round >= 0) rows.push({ serveMs, tokens: claimed.length, onePassMs, replayMs });
    }
  } finally {
    await scorer?.stop();
    for (const s of servers) await s.supervisor.stop();
    await rm(logDir, { recursive: true, force: true });
  }
  const onePassVsServe = median(rows.map((r) => r.onePassMs / r.serveMs));
  const replayVsServe = median(rows.map((r) => r.replayMs / r.serveMs));
  const rate = rateFor(0.1, 100, 0.99);
  return {
    rounds: o.rounds,
    maxTokens: o.maxTokens,
    positions: o.positions,
    serveMs: median(rows.map((r) => r.serveMs)),
    completionTokens: median(rows.map((r) => r.tokens)),
    onePassMs: median(rows.map((r) => r.onePassMs)),
    replayMs: median(rows.map((r) => r.replayMs)),
    onePassVsServe,
    replayVsServe,
    shareAt: { "0.5": shareOf(0.5, onePassVsServe), "1": shareOf(1, onePassVsServe) },
    goal: { rate, shareOnePass: shareOf(rate, onePassVsServe), shareReplay: shareOf(rate, replayVsServe) },
  };
}
