/**
 * Verified contribution, the auditor's side, on the real thing: an auditor node daemon (its own
 * llama-server on the default model, 1 slot) connected to a real coordinator is sent audit.start
 * frames through the coordinator, and its audit.result frames are judged with the calibrated
 * thresholds, as the coordinator will: an honest node's output passes (greedy and sampled, from
 * a 2-slot llama-server running two jobs at once), random tokens fail, and the greedy output of
 * the default model requantised to Q2_K, claimed as the default's, fails. The auditor scores in
 * one pass, and a one pass gives exactly a token-by-token replay's scores.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, createApiKey, judge, loadThresholds, samplingOf, startCoordinator, thresholdsFor } from "@sharedllm/coordinator";
import {
  DEFAULT_MODEL,
  EngineConnections,
  type LlamaServer,
  ModelStore,
  type NodeDaemon,
  onePassClaim,
  replayClaim,
  Scorer,
  startLlamaServer,
  startNodeDaemon,
} from "@sharedllm/node";
import type { AuditResult, AuditStart, ControlChannel, NodeFrame } from "@sharedllm/protocol";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "@sharedllm/testkit";
import { runClaim } from "@sharedllm/testkit/claims";
import { requantizedDefault } from "@sharedllm/testkit/requantized";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MESSAGES = [{ role: "user", content: "Explain how photosynthesis works." }];
const MAX_TOKENS = 48;

let paths: Awaited<ReturnType<typeof tempPaths>>;
let database: TestDatabase;
let coordinator: Coordinator;
let auditor: NodeDaemon;
const engines: { server: LlamaServer; connections: EngineConnections }[] = [];
/** every JSON frame the auditor sent, in order */
const fromAuditor: NodeFrame[] = [];

/** The node's end of its in-process control channel, with the frames it sends recorded. */
function recorded(channel: ControlChannel): ControlChannel {
  return {
    get open() {
      return channel.open;
    },
    send(frame) {
      if (!frame.startsWith("\u0001")) fromAuditor.push(JSON.parse(frame) as NodeFrame);
      channel.send(frame);
    },
    close: (code, reason) => channel.close(code, reason),
    onMessage: (listener) => channel.onMessage(listener),
    onClose: (listener) => channel.onClose(listener),
  };
}

async function serve(path: string, slots: number) {
  const server = await startLlamaServer({
    engine: auditor.engine,
    modelId: DEFAULT_MODEL.id,
    modelPath: path,
    slots,
    contextPerSlot: 2048,
    logDir: paths.home,
  });
  const e = { server, connections: new EngineConnections(server.port, `Bearer ${server.apiKey}`) };
  engines.push(e);
  return e;
}

let auditCount = 0;
/** Sends an audit through the coordinator and waits for the auditor's answer. */
async function audit(claimed: number[], o: Partial<AuditStart> = {}): Promise<NodeFrame> {
  const frame: AuditStart = {
    type: "audit.start",
    auditId: `audit-${++auditCount}`,
    kind: "chat",
    request: { model: DEFAULT_MODEL.id, messages: MESSAGES },
    claimed,
    positions: claimed.map((_, i) => i),
    topK: 100,
    ...o,
  };
  coordinator.fleet.get(auditor.nodeId)?.send(frame);
  return waitFor(
    `the answer to ${frame.auditId}`,
    () => fromAuditor.find((f) => (f.type === "audit.result" || f.type === "audit.error") && f.auditId === frame.auditId),
    60_000,
  );
}

const thresholds = () => thresholdsFor(loadThresholds(), DEFAULT_MODEL.sha256, auditor.engine.variant).thresholds;

beforeAll(async () => {
  paths = await tempPaths();
  database = await testDatabase();
  const joinToken = randomBytes(32).toString("base64url");
  coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: quietLogger() });
  auditor = await startNodeDaemon({
    paths,
    coordinatorUrl: coordinator.url,
    dialControl: async (token) => recorded(await coordinator.dialLocal(token)),
    joinToken,
    model: "default",
    slots: 1,
    contextPerSlot: 2048,
    auditor: true,
    logger: quietLogger(),
  });
  await waitFor("the auditor online", () => coordinator.fleet.get(auditor.nodeId));
}, 180_000);

afterAll(async () => {
  for (const e of engines) {
    e.connections.close();
    await e.server.supervisor.stop();
  }
  await auditor?.stop();
  await coordinator?.close();
  await database?.cleanup();
  await paths?.cleanup();
});

describe("an auditor", () => {
  it("offers to audit in its hello", () => {
    expect(fromAuditor[0]).toMatchObject({ type: "hello", auditor: true, slots: 1 });
  });

  it("passes an honest node's output, greedy and sampled, and counts the prompt as the serving engine did", async () => {
    const store = new ModelStore(paths.cache);
    const honest = await serve(store.blobPath(DEFAULT_MODEL.sha256), 2);
    const request = (fields: object) => ({
      model: DEFAULT_MODEL.id,
      messages: MESSAGES,
      max_tokens: MAX_TOKENS,
      n_predict: MAX_TOKENS,
      ...fields,
    });
    // two jobs at once on the 2-slot engine: their tokens share its batches
    const [greedy, sampled] = await Promise.all([
      runClaim(honest.connections, "chat", request({ temperature: 0 })),
      runClaim(honest.connections, "chat", request({ temperature: 0.8, seed: 5 })),
    ]);
    const scored: AuditResult[] = [];
    for (const [job, fields] of [
      [greedy, { temperature: 0 }],
      [sampled, { temperature: 0.8, seed: 5 }],
    ] as const) {
      const answer = await audit(job.claimed, { request: request(fields) });
      expect(answer.type).toBe("audit.result");
      const result = answer as AuditResult;
      scored.push(result);
      expect(result.promptTokens).toBe(job.usage.prompt_tokens);
      expect(result.scores.map((s) => s.position)).toEqual(job.claimed.map((_, i) => i));
      for (const s of result.scores) expect(s.topLogprobs).toHaveLength(100);
      const verdict = judge(result.scores, samplingOf(request(fields)), thresholds());
      expect(verdict, JSON.stringify(verdict)).toMatchObject({ pass: true });
    }
    // greedy: the auditor's top token at every position, but for near-ties
    const offTop = (scored[0] as AuditResult).scores.filter((s) => s.rank !== 1);
    expect(offTop.every((s) => s.topLogprob - (s.logprob as number) < thresholds().tieMargin)).toBe(true);
  }, 120_000);

  it("scores in one pass exactly as a token-by-token replay does", async () => {
    const store = new ModelStore(paths.cache);
    const path = store.blobPath(DEFAULT_MODEL.sha256);
    const honest = await serve(path, 1);
    const request = {
      model: DEFAULT_MODEL.id,
      messages: MESSAGES,
      max_tokens: MAX_TOKENS,
      n_predict: MAX_TOKENS,
      temperature: 0.8,
      seed: 9,
    };
    const job = await runClaim(honest.connections, "chat", request);
    const claim = {
      kind: "chat" as const,
      request,
      claimed: job.claimed,
      positions: [...new Set([0, 1, 5, 6, 7, 20, job.claimed.length - 1])].filter((p) => p < job.claimed.length).sort((a, b) => a - b),
      topK: 100,
    };
    const scorer = await Scorer.start({ engine: auditor.engine, modelPath: path, contextSize: 2048, threads: 2 });
    try {
      const signal = new AbortController().signal;
      const one = await onePassClaim(claim, honest.connections, scorer, signal);
      const replayed = await replayClaim(claim, honest.connections, signal);
      expect(one?.scores).toHaveLength(claim.positions.length);
      expect(one).toEqual(replayed);
    } finally {
      await scorer.stop();
    }
  }, 120_000);

  it("fails random tokens of a plausible length", async () => {
    const claimed = Array.from({ length: 32 }, (_, i) => (i * 7919 + 13) % 49_152);
    const result = (await audit(claimed, { positions: [0, 3, 8, 9, 15, 22, 31] })) as AuditResult;
    expect(result.type).toBe("audit.result");
    expect(result.scores.map((s) => s.position)).toEqual([0, 3, 8, 9, 15, 22, 31]);
    expect(result.scores.filter((s) => s.rank === null).length).toBeGreaterThanOrEqual(6);
    expect(judge(result.scores, samplingOf({ temperature: 0 }), thresholds())).toMatchObject({ pass: false, failed: "greedy" });
    // llama-server's default sampling: top_k 40 and min_p 0.05 bound every token
    const sampled = judge(result.scores, samplingOf({}), thresholds());
    if (sampled.pass) throw new Error("random tokens passed as a sampled job's");
    expect(["top_k", "min_p"]).toContain(sampled.failed);
  }, 60_000);

  it("scores a claimed token outside the vocabulary as unranked, and nothing after it", async () => {
    const result = (await audit([28, 253, 1_000_000, 314, 28], { positions: [0, 2, 3, 4] })) as AuditResult;
    expect(result.type).toBe("audit.result");
    expect(result.scores.map((s) => s.position)).toEqual([0, 2]);
    expect(result.scores[1]).toMatchObject({ rank: null, logprob: null });
    expect(judge(result.scores, samplingOf({}), thresholds()).pass).toBe(false);
  }, 60_000);

  it("fails the greedy output of a cheaper quantisation claimed as the default model", async () => {
    const cheap = await requantizedDefault("Q2_K");
    const cheat = await serve(cheap.path, 1);
    const request = { model: DEFAULT_MODEL.id, messages: MESSAGES, max_tokens: MAX_TOKENS, n_predict: MAX_TOKENS, temperature: 0 };
    const job = await runClaim(cheat.connections, "chat", request);
    const result = (await audit(job.claimed, { request })) as AuditResult;
    expect(result.type).toBe("audit.result");
    // the cheat's own prompt is the default's: same tokenizer
    expect(result.promptTokens).toBe(job.usage.prompt_tokens);
    const verdict = judge(result.scores, samplingOf(request), thresholds());
    expect(verdict).toMatchObject({ pass: false, mode: "greedy", failed: "greedy" });
    if (verdict.pass) return;
    expect(verdict.figures.worstGap).toBeGreaterThan(thresholds().tieMargin * 4);
    expect(verdict.worst.rank).not.toBe(1);
    expect(verdict.reason).toContain(`position ${verdict.worst.position}`);
  }, 120_000);

  it("refuses audits it cannot score as sent", async () => {
    expect(await audit([1, 2, 3], { positions: [2, 1] })).toMatchObject({
      type: "audit.error",
      message: expect.stringContaining("ascending"),
    });
    expect(await audit([1, 2, 3], { positions: [3] })).toMatchObject({
      type: "audit.error",
      message: expect.stringContaining("past the claimed"),
    });
    const other = "f".repeat(64);
    expect(await audit([1, 2, 3], { sha256: other })).toMatchObject({
      type: "audit.error",
      message: `this node does not serve the model file ${other}`,
    });
    expect(await audit([1, 2, 3], { request: { model: "no-such-model", messages: MESSAGES } })).toMatchObject({
      type: "audit.error",
      message: "this node does not serve no-such-model",
    });
    expect(await audit([1, 2, 3], { sha256: DEFAULT_MODEL.sha256, request: { model: "any-name", messages: MESSAGES } })).toMatchObject({
      type: "audit.result",
    });
  }, 60_000);

  it("drops a cancelled audit, and serves jobs while it audits", async () => {
    // 256 positions 4 tokens apart: scores far longer than the 8-token job below takes on the same engine
    const long = Array.from({ length: 1024 }, (_, i) => (i * 104_729 + 7) % 49_152);
    const cancelled = `audit-${++auditCount}`;
    const node = coordinator.fleet.get(auditor.nodeId);
    node?.send({
      type: "audit.start",
      auditId: cancelled,
      kind: "chat",
      request: { model: DEFAULT_MODEL.id, messages: MESSAGES },
      claimed: long,
      positions: Array.from({ length: 256 }, (_, i) => 4 * i + 3),
      topK: 100,
    });
    // a job through the coordinator while the audit runs on the same engine
    const { secret } = await createApiKey(coordinator.db, "audit-test");
    const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${secret}` },
      body: JSON.stringify({ model: DEFAULT_MODEL.id, messages: MESSAGES, max_tokens: 8, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(8);
    node?.send({ type: "audit.cancel", auditId: cancelled });
    // audits run one after another: once the next is answered, the cancelled one has ended
    expect(await audit([1, 2, 3])).toMatchObject({ type: "audit.result" });
    expect(fromAuditor.filter((f) => "auditId" in f && f.auditId === cancelled)).toEqual([]);
  }, 120_000);
});
