/**
 * The auditor's engine side of verified contribution: scores another node's claimed output of a
 * job with this node's own copy of the model (the same GGUF file). The prompt is tokenized as a
 * fresh job's would be (engineCalls.promptTokens), and at each audited position j the engine is
 * asked for its next-token distribution after prompt + claimed[0..j), with `n_probs`.
 *
 * Two ways, the same distributions. In one pass (onePassClaim, on the engine's one-pass scorer,
 * engine/scorer.ts): the prompt and the claimed output up to the last audited position go in as
 * batches, each cut at an audited position so that its distribution is the batch's only output:
 * about the cost of a prefill. Or replayed (replayClaim), when there is no scorer: the claimed
 * output goes in one token at a time, as the serving node generated it, one-token completions over
 * a growing prefix on one slot with its cache kept (each computes one new token), up to the last
 * audited position: one decode per claimed token, about what generating the output cost. Either
 * gives the serving node's own distributions (bit for bit on the same build and CPU kind, whatever
 * its slot count: a decode step batches one token per sequence, and the one pass's output layer
 * computes one row per decode as a decode step does). A batch with several outputs does not: its
 * output layer runs another kernel, which on the CPU build moves log-probabilities by up to 0.4
 * nats (measured by bench/auditCalibrate.ts), far more than near-ties need to flip.
 *
 * The log-probabilities are of the model's raw distribution at temperature 1: llama-server's
 * `n_probs` with `post_sampling_probs: false` (its default) reports a softmax of the raw logits
 * (server-common.cpp `get_token_probabilities`), before any sampler, so the job's temperature,
 * top_k, top_p, min_p, penalties and logit_bias play no part. The token a step produces is not
 * used, but llama-server reports no probabilities for a token that ends mid-character (a byte of
 * a multi-byte character) or the end of text, so each step's sampler is made to produce a plain
 * letter (a logit bias, which the raw distribution reported does not see).
 *
 * A claimed token outside the model's vocabulary scores as unranked, and the audit ends there:
 * the engine refuses a prompt holding it, so no later position can be scored. Whether a job's
 * own sampling makes its claim plausible is the coordinator's verdict
 * (coordinator/src/audits/verdict.ts), not the auditor's.
 */
import type { AuditScore, AuditStart, NodeFrame } from "@sharedllm/protocol";
import { type Scorer, ScorerFailed } from "../engine/scorer.js";
import { callEngine, completionStep, EngineRefused, promptTokens, tokenize } from "./engineCalls.js";
import type { EngineConnections } from "./engineConnection.js";

/** What the engine is asked to score, as an audit.start frame carries it. */
export type Claim = Pick<AuditStart, "kind" | "request" | "claimed" | "positions" | "topK">;

/** One position's score, with the auditor's top `topK` log-probabilities (best first). */
export type ClaimScore = AuditScore & { topLogprobs: number[] };

/** Why a claim cannot be scored as sent (positions out of order or range), or undefined when it can. */
export function claimRefusal(claim: Claim): string | undefined {
  let previous = -1;
  for (const p of claim.positions) {
    if (p >= claim.claimed.length) return `position ${p} is past the claimed output (${claim.claimed.length} tokens)`;
    if (p <= previous) return `positions must be ascending and distinct (${p} after ${previous})`;
    previous = p;
  }
  return undefined;
}

/** A claim's scores, and how they were made. */
export interface ScoredClaim {
  /** the prompt's token count, by the auditor's own tokenizer */
  promptTokens: number;
  /** one per position, up to the first claimed token outside the vocabulary */
  scores: ClaimScore[];
  method: "one-pass" | "replay";
}

/**
 * Scores `claim` as the auditor reports it: in one pass on `scorer` when there is one that can
 * score it, else replayed token by token on the engine. Undefined when `signal` cancelled it.
 * Throws EngineRefused when the engine refuses a step (e.g. the prompt and output do not fit its
 * context), EngineUnreachable when it is down.
 */
export async function scoreClaim(
  claim: Claim,
  engine: EngineConnections,
  signal: AbortSignal,
  scorer?: Scorer,
): Promise<ScoredClaim | undefined> {
  if (scorer?.alive) {
    try {
      const one = await onePassClaim(claim, engine, scorer, signal);
      return one && { ...one, method: "one-pass" };
    } catch (err) {
      if (!(err instanceof ScorerFailed)) throw err;
    }
  }
  const replayed = await replayClaim(claim, engine, signal);
  return replayed && { ...replayed, method: "replay" };
}

/** The last position to score: the last audited one, or the first claimed token outside the vocabulary if earlier. */
function lastPosition(claim: Pick<Claim, "claimed" | "positions">, vocab: number): number {
  const outside = claim.claimed.findIndex((t) => t >= vocab || t < 0);
  return Math.min(claim.positions.at(-1) ?? -1, outside >= 0 ? outside : Number.POSITIVE_INFINITY);
}

/**
 * Scores `claim` in one pass on `scorer`: the prompt and the claimed output up to the last audited
 * position decoded as batches, each ending at the row before an audited position, whose
 * distribution is read. Undefined when cancelled; throws ScorerFailed when the scorer cannot score
 * it (e.g. the prompt and output do not fit its context).
 */
export async function onePassClaim(
  claim: Claim,
  engine: EngineConnections,
  scorer: Scorer,
  signal: AbortSignal,
): Promise<{ promptTokens: number; scores: ClaimScore[] } | undefined> {
  const head = await promptTokens(claim.kind, claim.request, engine, signal);
  if (!head) return undefined;
  const pass = onePassOf(head, claim, scorer.vocab);
  if (!pass.positions.length) return { promptTokens: head.length, scores: [] };
  const rows = await scorer.score(pass.tokens, pass.rows, pass.targets, claim.topK);
  if (rows.length !== pass.rows.length) throw new ScorerFailed(`the scorer answered ${rows.length} rows of ${pass.rows.length}`);
  const scores = rows.map((r, i) => {
    const top = r.ids.map((id, j) => ({ id, logprob: Math.min(0, r.logprobs[j] as number) }));
    if (!top.length) throw new ScorerFailed("the scorer answered a row without its top tokens");
    return score(pass.positions[i] as number, pass.targets[i] as number, top);
  });
  return { promptTokens: head.length, scores };
}

/**
 * What a one pass of `claim` decodes after its prompt's tokens `head`: the prompt and the claimed
 * tokens up to the last position scored (the last audited one, or the first claimed token outside
 * a vocabulary of `vocab` if earlier), the row whose distribution scores each position (the token
 * before it: the prompt's last for position 0) and the claimed token ranked there.
 */
export function onePassOf(
  head: readonly number[],
  claim: Pick<Claim, "claimed" | "positions">,
  vocab: number,
): { tokens: number[]; positions: number[]; rows: number[]; targets: number[] } {
  if (!head.length) throw new ScorerFailed("an empty prompt has no row to score the first position from");
  const last = lastPosition(claim, vocab);
  const positions = claim.positions.filter((p) => p <= last);
  return {
    tokens: [...head, ...claim.claimed.slice(0, Math.max(0, last))],
    positions,
    rows: positions.map((p) => head.length + p - 1),
    targets: positions.map((p) => claim.claimed[p] as number),
  };
}

/**
 * Scores `claim` by a token-by-token replay on the engine: the prompt's token count and one score
 * per position (up to the first claimed token outside the vocabulary). Undefined when `signal`
 * cancelled it. Throws EngineRefused when the engine refuses a step (e.g. the prompt and output
 * do not fit its context), EngineUnreachable when it is down.
 */
export async function replayClaim(
  claim: Claim,
  engine: EngineConnections,
  signal: AbortSignal,
): Promise<{ promptTokens: number; scores: ClaimScore[] } | undefined> {
  const head = await promptTokens(claim.kind, claim.request, engine, signal);
  const letters = await tokenize("a", { special: false }, engine, signal);
  const models = await callEngine(engine, "/v1/models", undefined, signal);
  if (!head || !letters || !models) return undefined;
  const letter = letters[0];
  const vocab = (models.data as { meta?: { n_vocab?: unknown } }[] | undefined)?.[0]?.meta?.n_vocab;
  if (letter === undefined || typeof vocab !== "number") throw new EngineRefused(200, "the engine did not tell its vocabulary");
  const fields = { n_probs: claim.topK, post_sampling_probs: false, temperature: 0, logit_bias: [[letter, 100]] };
  const { n_probs: _, ...replay } = fields;
  const tokens = [...head, ...claim.claimed];
  const audited = new Set(claim.positions);
  const last = lastPosition(claim, vocab);
  const scores: ClaimScore[] = [];
  let slot: number | undefined;
  for (let position = 0; position <= last; position++) {
    const scored = audited.has(position);
    const step = await completionStep(engine, tokens.slice(0, head.length + position), { slot, fields: scored ? fields : replay }, signal);
    if (!step) return undefined;
    slot = typeof step.id_slot === "number" ? step.id_slot : undefined;
    if (!scored) continue;
    const top = topOf(step);
    if (!top.length) {
      throw new EngineRefused(200, `the engine answered a scoring step without probabilities: ${JSON.stringify(step).slice(0, 300)}`);
    }
    scores.push(score(position, claim.claimed[position] as number, top));
  }
  return { promptTokens: head.length, scores };
}

/** The ranking a step reports: `completion_probabilities[0].top_logprobs`, best first. */
function topOf(step: Record<string, unknown>): { id: number; logprob: number }[] {
  const probs = step.completion_probabilities;
  const first = Array.isArray(probs) ? (probs[0] as { top_logprobs?: unknown } | undefined) : undefined;
  const list = Array.isArray(first?.top_logprobs) ? (first.top_logprobs as { id?: unknown; logprob?: unknown }[]) : [];
  return list
    .filter((t) => Number.isInteger(t.id) && typeof t.logprob === "number")
    .map((t) => ({ id: t.id as number, logprob: Math.min(0, t.logprob as number) }));
}

function score(position: number, claimed: number, top: { id: number; logprob: number }[]): ClaimScore {
  const at = top.findIndex((t) => t.id === claimed);
  const best = top[0] as { id: number; logprob: number };
  return {
    position,
    rank: at < 0 ? null : at + 1,
    logprob: at < 0 ? null : (top[at] as { logprob: number }).logprob,
    top: best.id,
    topLogprob: best.logprob,
    floorLogprob: (top[top.length - 1] as { logprob: number }).logprob,
    topLogprobs: top.map((t) => t.logprob),
  };
}

/**
 * Runs an audit.start on the engine and answers it: audit.result, or audit.error when the frame
 * is malformed or the engine could not score it. A cancelled audit is not answered. Returns how
 * the answered result was scored (for the log).
 */
export async function runAudit(
  frame: AuditStart,
  engine: EngineConnections,
  send: (f: NodeFrame) => void,
  signal: AbortSignal,
  scorer?: Scorer,
): Promise<ScoredClaim["method"] | undefined> {
  const refused = claimRefusal(frame);
  if (refused) {
    send({ type: "audit.error", auditId: frame.auditId, message: refused });
    return undefined;
  }
  let result: Awaited<ReturnType<typeof scoreClaim>>;
  try {
    result = await scoreClaim(frame, engine, signal, scorer);
  } catch (err) {
    if (signal.aborted) return undefined;
    if (!(err instanceof EngineRefused)) throw err;
    send({ type: "audit.error", auditId: frame.auditId, message: err.message });
    return undefined;
  }
  if (!result || signal.aborted) return undefined;
  send({
    type: "audit.result",
    auditId: frame.auditId,
    promptTokens: result.promptTokens,
    scores: result.scores.map((s) => ({ ...s, topLogprobs: s.topLogprobs.map((l) => Math.round(l * 1e4) / 1e4) })),
  });
  return result.method;
}
