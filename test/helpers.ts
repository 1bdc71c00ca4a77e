/** Shared test helpers: temporary homes, conditions with deadlines, quiet loggers. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { resolvePaths } from "../node/src/paths.ts";

/** A fresh SHAREDLLM_HOME sharing the machine's cache. */
export async function tempPaths(prefix = "sharedllm-test-") {
  const home = await mkdtemp(join(tmpdir(), prefix));
  return { home, cache: resolvePaths().cache, cleanup: () => rm(home, { recursive: true, force: true }) };
}

export const quietLogger = () => pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });

/** Polls until check() returns a truthy value, or fails after timeoutMs with what it was waiting for. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
