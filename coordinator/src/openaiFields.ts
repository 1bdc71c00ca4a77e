/**
 * Fields that OpenAI's schema requires in a response and llama-server leaves out: each choice's
 * `logprobs`, and a chat message's `refusal`, null where there is nothing. Strict clients in typed
 * languages reject a response without them; test/e2e/openai.test.ts checks every response shape
 * against the official schema.
 */

/** Fills in, on a whole (non-streamed) response body, the required fields it lacks; returns the body. */
export function withRequiredFields(body: Record<string, unknown>): Record<string, unknown> {
  if (!Array.isArray(body.choices)) return body;
  for (const choice of body.choices as unknown[]) {
    if (typeof choice !== "object" || choice === null) continue;
    const c = choice as { logprobs?: unknown; message?: { refusal?: unknown } };
    c.logprobs ??= null;
    if (typeof c.message === "object" && c.message !== null) c.message.refusal ??= null;
  }
  return body;
}
