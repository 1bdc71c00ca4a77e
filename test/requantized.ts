/**
 * The default model requantised to a cheaper type with the engine's own llama-quantize: what a
 * cheating test node serves while it claims to serve the default (verified contribution). Made
 * once per machine and kept in the shared model store as `smollm2-135m-instruct.<type>`.
 *
 * `Q2_K` (the default) is llama-quantize's 2-bit K-quant scheme; on this model most of it falls
 * back to Q4_0 (K-quants need rows of a multiple of 256 and most of its rows are 576 wide) and
 * its feed-forward down projections go to Q3_K: its text stays fluent and differs from the
 * default's. `Q2_0` (2 bits in groups of 64) fits every tensor and writes gibberish.
 */
import { DEFAULT_MODEL, ensureEngine, type ModelEntry, ModelStore, requantizedModel, resolvePaths } from "@sharedllm/node";

export async function requantizedDefault(type = "Q2_K"): Promise<ModelEntry & { path: string }> {
  const { cache } = resolvePaths();
  const store = new ModelStore(cache);
  const model = (await store.get(DEFAULT_MODEL.id)) ?? (await store.pull("default"));
  const entry = await requantizedModel({ cache, engine: await ensureEngine({ cache }), model, type });
  return { ...entry, path: store.blobPath(entry.sha256) };
}
