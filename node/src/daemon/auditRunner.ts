/**
 * The auditor's engine side of verified contribution: scores another node's claimed output of a
 * job with this node's own copy of the model (the same GGUF file). The prompt is tokenized as a
 * fresh job's would be (engineCalls.promptTokens), and at each audited position j the engine is
 * asked for its next-token distribution after prompt + claimed[0..j), with `n_probs`.
 *
 * The claimed output goes in one token at a time, as the serving node generated it: one-token
 * completions over a growing prefix on one slot with its cache kept (each computes one new
 * token), up to the last audited position. The distributions are then the serving node's own
 * (bit for bit on the same build and CPU kind, whatever its slot count: a decode step batches
 * one token per sequence). Tokens taken as a batch are computed with other rounding, which on the
 * CPU build moves log-probabilities by up to 0.3 nats once the context passes 256 tokens
 * (measured by bench/auditCalibrate.ts), far more than near-ties need to flip; replaying costs
 * one decode per claimed token, about what generating the output cost.
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

/**
 * Scores `claim` on the engine: the prompt's token count and one score per position (up to the
 * first claimed token outside the vocabulary). Undefined when `signal` cancelled it. Throws
 * EngineRefused when the engine refuses a step (e.g. the prompt and output do not fit its
 * context), EngineUnreachable when it is down.
 */
export async function scoreClaim(
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
  const outside = claim.claimed.findIndex((t) => t >= vocab);
  const fields = { n_probs: claim.topK, post_sampling_probs: false, temperature: 0, logit_bias: [[letter, 100]] };
  const { n_probs: _, ...replay } = fields;
  const tokens = [...head, ...claim.claimed];
  const audited = new Set(claim.positions);
  const last = Math.min(claim.positions.at(-1) ?? -1, outside >= 0 ? outside : Number.POSITIVE_INFINITY);
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
 * is malformed or the engine could not score it. A cancelled audit is not answered.
 */
export async function runAudit(frame: AuditStart, engine: EngineConnections, send: (f: NodeFrame) => void, signal: AbortSignal) {
  const refused = claimRefusal(frame);
  if (refused) return send({ type: "audit.error", auditId: frame.auditId, message: refused });
  let result: Awaited<ReturnType<typeof scoreClaim>>;
  try {
    result = await scoreClaim(frame, engine, signal);
  } catch (err) {
    if (signal.aborted) return;
    if (!(err instanceof EngineRefused)) throw err;
    return send({ type: "audit.error", auditId: frame.auditId, message: err.message });
  }
  if (!result || signal.aborted) return;
  send({
    type: "audit.result",
    auditId: frame.auditId,
    promptTokens: result.promptTokens,
    scores: result.scores.map((s) => ({ ...s, topLogprobs: s.topLogprobs.map((l) => Math.round(l * 1e4) / 1e4) })),
  });
}
