/**
 * What audits cost (docs/verification.md), measured side by side in one run: a serving node (a
 * 1-slot llama-server) generates a job; an auditor (a 1-slot llama-server of its own) scores it
 * at `positions` random positions through the auditor's runner, which replays the claimed output
 * one token at a time up to the last position. For comparison, the same positions scored the
 * cheaper way the runner does not use (one batched prefill of the tokens up to each position:
 * other rounding, up to 0.33 nats off past 256 tokens). From the ratio of auditor work to serving
 * work per audited job follow the share of the network's compute audits take at a rate, and the
 * rate a goal needs: catch a node that cheats on 10% of its jobs within 100 of its jobs with 99%
 * probability.
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
  resolvePaths,
  scoreClaim,
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
  auditMs: number;
  batchedMs: number;
  /** auditor work per audited job relative to serving it (replay), and what batched scoring would cost */
  auditVsServe: number;
  batchedVsServe: number;
  /** the share of all compute audits take, at the rates the coordinator uses (established 0.5, new and suspect 1) */
  shareAt: Record<string, number>;
  /** the rate the goal needs (every audited cheat caught), and the compute share it costs with replay and batched */
  goal: { rate: number; shareReplay: number; shareBatched: number };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};

/** The share of compute audits take at audit rate `r` when an audit costs `c` times serving the job. */
const shareOf = (r: number, c: number) => (r * c) / (1 + r * c);

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
  const rows: { serveMs: number; tokens: number; auditMs: number; batchedMs: number }[] = [];
  try {
    const node = await serve();
    const auditor = await serve();
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
      const t1 = performance.now();
      await scoreClaim({ kind: "chat", request, claimed, positions, topK: 100 }, auditor.connections, signal);
      const auditMs = performance.now() - t1;
      const batchedMs = await batchedScoring(auditor.server, request, claimed, positions);
      // the first round warms both engines up
      if (round >= 0) rows.push({ serveMs, tokens: claimed.length, auditMs, batchedMs });
    }
  } finally {
    for (const s of servers) await s.supervisor.stop();
    await rm(logDir, { recursive: true, force: true });
  }
  const auditVsServe = median(rows.map((r) => r.auditMs / r.serveMs));
  const batchedVsServe = median(rows.map((r) => r.batchedMs / r.serveMs));
  const rate = rateFor(0.1, 100, 0.99);
  return {
    rounds: o.rounds,
    maxTokens: o.maxTokens,
    positions: o.positions,
    serveMs: median(rows.map((r) => r.serveMs)),
    completionTokens: median(rows.map((r) => r.tokens)),
    auditMs: median(rows.map((r) => r.auditMs)),
    batchedMs: median(rows.map((r) => r.batchedMs)),
    auditVsServe,
    batchedVsServe,
    shareAt: { "0.5": shareOf(0.5, auditVsServe), "1": shareOf(1, auditVsServe) },
    goal: { rate, shareReplay: shareOf(rate, auditVsServe), shareBatched: shareOf(rate, batchedVsServe) },
  };
}

/**
 * The positions scored the batched way: the chat's prompt tokens plus the claimed tokens up to
 * each position, one /completion of one token each (the engine's cache keeps the prefix, so only
 * the tokens since the last position are prefilled, in one batch).
 */
async function batchedScoring(
  server: LlamaServer,
  request: Record<string, unknown>,
  claimed: number[],
  positions: number[],
): Promise<number> {
  const call = async (path: string, body: object) => {
    const res = await fetch(`${server.url}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return (await res.json()) as Record<string, unknown>;
  };
  // the slot's cache holds this output from the replay: another prompt takes its place first
  await call("/completion", { prompt: "An unrelated line.", n_predict: 1, cache_prompt: true });
  const t0 = performance.now();
  const { prompt } = await call("/apply-template", request);
  const { tokens } = (await call("/tokenize", { content: prompt, add_special: true, parse_special: true })) as { tokens: number[] };
  for (const p of positions) {
    await call("/completion", {
      prompt: [...tokens, ...claimed.slice(0, p)],
      n_predict: 1,
      n_probs: 100,
      temperature: 0,
      cache_prompt: true,
    });
  }
  return performance.now() - t0;
}
