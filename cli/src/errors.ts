/**
 * How the command reports a failure. A SharedLLMError is one the user can act on: its message,
 * and its hint on a line of its own, with no stack trace. Anything else is unexpected: its
 * message first, then the whole of it (stack, cause, code) to debug it or report it.
 */
import { inspect } from "node:util";
import { SharedLLMError } from "@sharedllm/node";

export function renderError(err: unknown): string {
  if (err instanceof SharedLLMError) return `sharedllm: ${err.message}\n${err.hint ? `hint: ${err.hint}\n` : ""}`;
  const message = err instanceof Error ? err.message : String(err);
  return `sharedllm: ${message}\n(unexpected; the details below help to debug it or report it)\n${inspect(err)}\n`;
}
