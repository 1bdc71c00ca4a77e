/**
 * One AbortSignal for the whole process, fired by the first SIGINT or SIGTERM;
 * a second signal exits at once. Everything long-running listens to it.
 */
import { SharedLLMError } from "@sharedllm/node";

let controller: AbortController | undefined;

export function shutdownSignal(): AbortSignal {
  if (!controller) {
    const c = new AbortController();
    controller = c;
    const onSignal = (sig: NodeJS.Signals) => {
      if (c.signal.aborted) process.exit(130);
      c.abort(new SharedLLMError("interrupted", `interrupted by ${sig}`));
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  }
  return controller.signal;
}

/** Resolves once the signal fires (at once when it already has). */
export function untilAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}
