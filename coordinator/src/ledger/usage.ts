/**
 * What a job may be charged. A node reports its engine's token counts, but a node is a
 * stranger's machine: the coordinator charges at most what it can bound itself. The prompt is
 * bounded by the request's size (`promptTokenBound`), the completion by the generation limit
 * it reserved credits for and by the text it relayed to the client: every generated token
 * decodes to at least one byte, except the few the engine swallows (the end-of-turn token, a
 * matched stop string, a character cut at the limit).
 */
import type { Usage } from "@sharedllm/protocol";

/** Tokens a generation may use without relaying any text: the end token and a cut character. */
const UNRELAYED_TOKENS = 16;

/**
 * Counts the bytes of generated text in what a node sent: the streamed chunks' deltas, or a
 * non-streaming response's choices. Anything it cannot read counts as nothing.
 */
export class RelayedText {
  bytes = 0;

  /** One streamed event's data (a chat or completion chunk). */
  addChunk(data: string): void {
    if (data.charCodeAt(0) !== 123 /* { */) return;
    try {
      this.addChoices((JSON.parse(data) as { choices?: unknown }).choices, "delta");
    } catch {
      // not JSON: no text the client could use
    }
  }

  /** A whole non-streaming response body. */
  addBody(body: Record<string, unknown>): void {
    this.addChoices(body.choices, "message");
  }

  private addChoices(choices: unknown, field: "delta" | "message"): void {
    if (!Array.isArray(choices)) return;
    for (const choice of choices as Record<string, unknown>[]) {
      if (typeof choice !== "object" || choice === null) continue;
      this.addText(choice.text);
      const m = choice[field] as Record<string, unknown> | undefined;
      if (typeof m !== "object" || m === null) continue;
      this.addText(m.content);
      this.addText(m.reasoning_content);
      if (Array.isArray(m.tool_calls)) {
        for (const call of m.tool_calls as { function?: { name?: unknown; arguments?: unknown } }[]) {
          this.addText(call?.function?.name);
          this.addText(call?.function?.arguments);
          this.bytes += UNRELAYED_TOKENS; // the call's own markup is generated too
        }
      }
    }
  }

  private addText(text: unknown): void {
    if (typeof text === "string") this.bytes += Buffer.byteLength(text);
  }
}

export interface UsageBounds {
  /** upper bound on the prompt's tokens, from the request's size */
  promptTokens: number;
  /** the generation limit the job was reserved for */
  generationLimit: number;
  /** the bytes of generated text relayed to the client */
  relayedBytes: number;
  /** the request's stop strings: their tokens are generated but not relayed */
  stop?: string | string[] | null;
}

/** The usage the coordinator charges: the node's figures, each cut to what the coordinator can bound. */
export function meteredUsage(reported: Usage, b: UsageBounds): Usage {
  const stops = b.stop === undefined || b.stop === null ? [] : [b.stop].flat();
  const stopBytes = stops.reduce((n, s) => n + Buffer.byteLength(s), 0);
  const prompt = Math.min(reported.prompt_tokens, b.promptTokens);
  const completion = Math.min(reported.completion_tokens, b.generationLimit, b.relayedBytes + stopBytes + UNRELAYED_TOKENS);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}
