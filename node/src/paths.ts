/**
 * Where SharedLLM keeps things on this machine (docs/architecture.md, "Storage"):
 * `SHAREDLLM_CACHE` is shared by every instance (engine builds, model blobs),
 * `SHAREDLLM_HOME` is one instance's own state (keys, database, up.json).
 */
import { homedir } from "node:os";
import { join, resolve } from "node:path";

export interface Paths {
  /** One instance's state: keys, database, config, up.json. */
  home: string;
  /** Shared by all instances on this machine: engine builds, model blobs. */
  cache: string;
}

export function resolvePaths(env: NodeJS.ProcessEnv = process.env): Paths {
  return {
    home: resolve(env.SHAREDLLM_HOME || join(homedir(), ".sharedllm")),
    cache: resolve(env.SHAREDLLM_CACHE || join(homedir(), ".cache", "sharedllm")),
  };
}
