/**
 * What a job may be charged. A node is a stranger's machine: the coordinator charges what it can
 * count or bound itself. The completion is the tokens it counted in the stream, bounded by the
 * generation limit it reserved credits for and by the text it relayed to the client: every
 * generated token decodes to at least one byte, except the few the engine swallows (the
 * end-of-turn token, a matched stop string, a character cut at the limit). The prompt is the
 * node's figure bounded by the request's size (`promptTokenBound`).
 */
import type { Usage } from "@sharedllm/protocol";

/** Tokens a generation may use without relaying any text: the end token and a cut character. */
export const UNRELAYED_TOKENS = 16;

export interface UsageBounds {
  /** upper bound on the prompt's tokens, from the request's size */
  promptTokens: number;
  /** the generation limit the job was reserved for */
  generationLimit: number;
  /** the bytes of generated text relayed to the client */
  relayedBytes: number;
  /** the tokens the job's units streamed in events relayed, counted by the coordinator (the end token may come in none) */
  streamedTokens: number;
  /** the request's stop strings: their tokens are generated but not relayed */
  stop?: string | string[] | null;
}

/**
 * The usage the coordinator charges: the completion is its own count of the tokens the job's units
 * streamed (docs/verification.md), cut to the generation limit and to what the relayed text can
 * hold; the prompt is the node's figure, cut to the request's bound (an audit recounts it).
 */
export function meteredUsage(reportedPromptTokens: number, b: UsageBounds): Usage {
  const stops = b.stop === undefined || b.stop === null ? [] : [b.stop].flat();
  const stopBytes = stops.reduce((n, s) => n + Buffer.byteLength(s), 0);
  const prompt = Math.max(0, Math.min(reportedPromptTokens, b.promptTokens));
  const completion = Math.min(b.streamedTokens, b.generationLimit, b.relayedBytes + stopBytes + UNRELAYED_TOKENS);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}
