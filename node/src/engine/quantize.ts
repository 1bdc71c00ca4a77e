/**
 * `llama-quantize` of the engine's own build, and models requantised with it: what a test needs
 * for a node that serves a cheaper quantisation than it claims (verified contribution).
 *
 * The quantizer is two source files over libraries the engine already ships, compiled beside
 * llama-server in seconds (ensureEngineTool, build.ts). The quantising itself is the engine's code
 * (`llama_model_quantize` in libllama), so the numbers are the engine's.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ModelEntry, ModelStore } from "../models/store.js";
import { buildStep, type Engine, ensureEngineTool } from "./build.js";

/** The engine's llama-quantize, compiled first when it is not there yet; returns its path. */
export function ensureQuantizer(engine: Engine, signal?: AbortSignal): Promise<string> {
  return ensureEngineTool(
    engine,
    {
      name: "llama-quantize",
      includes: ["include", "ggml/include", "common", "tools/quantize"],
      sources: (src) => [join(src, "tools/quantize/quantize.cpp"), join(src, "tools/quantize/main.cpp")],
      libs: ["llama-common", "llama", "ggml", "ggml-base"],
    },
    signal,
  );
}

/**
 * `model` requantised to `type` (a llama-quantize type: `Q2_K`, `Q3_K_S`, `Q2_0`, ...) with the
 * engine's quantizer, kept in the model store as `<model id>.<type>` like any pulled model (made
 * once per machine; quantising is deterministic, so its sha256 is the same every time).
 */
export async function requantizedModel(o: {
  cache: string;
  engine: Engine;
  model: ModelEntry;
  type: string;
  signal?: AbortSignal;
}): Promise<ModelEntry> {
  const store = new ModelStore(o.cache);
  const id = `${o.model.id}.${o.type.toLowerCase()}`;
  const held = await store.get(id);
  if (held && existsSync(store.blobPath(held.sha256))) return held;
  const quantize = await ensureQuantizer(o.engine, o.signal);
  const work = await mkdtemp(join(tmpdir(), "sharedllm-requant-"));
  try {
    const file = join(work, `${id}.gguf`);
    await buildStep(quantize, ["--allow-requantize", store.blobPath(o.model.sha256), file, o.type], {
      // the engine's libraries, as llama-server finds them (llamaServer.ts)
      env: { ...process.env, LD_LIBRARY_PATH: [o.engine.binDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":") },
      signal: o.signal,
      log: join(work, "quantize.log"),
    });
    return await store.pull(file, { id });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
