/**
 * Makes the shared cache ready before the suite: the engine is built (about 6
 * minutes on 2 cores the first time, then reused) and the default model pulled.
 */
import { ensureEngine } from "../node/src/engine/build.ts";
import { ModelStore } from "../node/src/models/store.ts";
import { resolvePaths } from "../node/src/paths.ts";
import { terminalProgress } from "../node/src/progress.ts";

export default async function setup() {
  const { cache } = resolvePaths();
  await ensureEngine({ cache, progress: terminalProgress() });
  await new ModelStore(cache).pull("default", { progress: terminalProgress() });
}
