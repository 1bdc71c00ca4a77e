/**
 * `llama-quantize` of the engine's own build, and models requantised with it: what a test needs
 * for a node that serves a cheaper quantisation than it claims (verified contribution).
 *
 * The engine build (build.ts) keeps no build tree, and building it again with one more target
 * would cost the whole engine's build time (minutes) and change nothing the engine serves with.
 * The quantizer is two source files over libraries the engine already ships (libllama,
 * libllama-common, ggml), so it is compiled on its own from the same bundled source, against
 * those libraries, in seconds, and put beside llama-server in the engine's bin folder: by an
 * atomic rename of a finished binary, so the engine folder holds a working quantizer or none, and
 * `engine.json` and findEngine are untouched. The quantising itself is the engine's code
 * (`llama_model_quantize` in libllama), so the numbers are the engine's.
 */
import { existsSync } from "node:fs";
import { mkdtemp, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ModelEntry, ModelStore } from "../models/store.js";
import { buildStep, bundledSource, checkoutSource, type Engine } from "./build.js";

/** The engine's llama-quantize, compiled first when it is not there yet; returns its path. */
export async function ensureQuantizer(engine: Engine, signal?: AbortSignal): Promise<string> {
  const target = join(engine.binDir, "llama-quantize");
  if (existsSync(target)) return target;
  const work = await mkdtemp(join(tmpdir(), "sharedllm-quantize-"));
  try {
    const src = join(work, "src");
    await checkoutSource((await bundledSource()).bundle, src, signal);
    const out = join(engine.binDir, `.llama-quantize-${process.pid}`);
    await buildStep(
      process.env.CXX ?? "c++",
      [
        "-std=c++17",
        "-O2",
        ...["include", "ggml/include", "common", "tools/quantize"].flatMap((d) => ["-I", join(src, d)]),
        join(src, "tools/quantize/quantize.cpp"),
        join(src, "tools/quantize/main.cpp"),
        `-L${engine.binDir}`,
        // where the GNU linker finds what those libraries need in turn
        ...(process.platform === "linux" ? [`-Wl,-rpath-link,${engine.binDir}`] : []),
        "-lllama-common",
        "-lllama",
        "-lggml",
        "-lggml-base",
        "-pthread",
        "-o",
        out,
      ],
      { signal, log: join(work, "build.log") },
    );
    await rename(out, target);
    return target;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
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
