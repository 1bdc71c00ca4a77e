/**
 * What a job may be charged. A node reports its engine's token counts, but a node is a
 * stranger's machine: the coordinator charges at most what it can bound itself. The prompt is
 * bounded by the request's size (`promptTokenBound`), the completion by the generation limit
 * it reserved credits for, by the tokens it counted in the stream, and by the text it relayed to
 * the client: every generated token
 * decodes to at least one byte, except the few the engine swallows (the end-of-turn token, a
 * matched stop string, a character cut at the limit).
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

/** The usage the coordinator charges: the node's figures, each cut to what the coordinator can bound. */
export function meteredUsage(reported: Usage, b: UsageBounds): Usage {
  const stops = b.stop === undefined || b.stop === null ? [] : [b.stop].flat();
  const stopBytes = stops.reduce((n, s) => n + Buffer.byteLength(s), 0);
  const prompt = Math.min(reported.prompt_tokens, b.promptTokens);
  const completion = Math.min(
    reported.completion_tokens,
    b.generationLimit,
    b.streamedTokens + UNRELAYED_TOKENS,
    b.relayedBytes + stopBytes + UNRELAYED_TOKENS,
  );
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}
