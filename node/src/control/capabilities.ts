/**
 * What this machine can do, as a node tells the coordinator in its hello: CPU,
 * memory, GPU and VRAM (node-llama-cpp's detection), free disk, engine variant,
 * and a measured generation speed on the served model. The speed is measured once and kept in
 * `$SHAREDLLM_HOME/capabilities.json`; it is measured again when the hardware,
 * the engine, the model or the thread count changes.
 */
import { createHash } from "node:crypto";
import { readFile, statfs } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import type { Capabilities } from "@sharedllm/protocol";
import type { Logger } from "pino";
import type { Engine } from "../engine/build.js";
import { SharedLLMError } from "../errors.js";
import { writeFileAtomic } from "../lock.js";

export interface Hardware {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  gpu: string | null;
  vramBytes: number;
}

/** CPU and memory from the OS; GPU and VRAM from node-llama-cpp (none when it cannot tell). */
export async function detectHardware(logger: Logger): Promise<Hardware> {
  const cpuList = cpus();
  const hw: Hardware = {
    cpuModel: cpuList[0]?.model.trim() ?? "unknown",
    cores: cpuList.length,
    memoryBytes: totalmem(),
    gpu: null,
    vramBytes: 0,
  };
  try {
    const { getLlama } = await import("node-llama-cpp");
    const llama = await getLlama({ gpu: "auto", build: "never", progressLogs: false });
    if (llama.gpu) {
      hw.gpu = llama.gpu;
      hw.vramBytes = (await llama.getVramState()).total;
    }
    await llama.dispose();
  } catch (err) {
    logger.warn({ err: (err as Error).message }, "GPU detection failed; reporting none");
  }
  return hw;
}

/** The model a node serves, and how to measure its decode speed (tokens per second). */
interface MeasuredModel {
  sha256: string;
  measure: () => Promise<number>;
}

interface Cached {
  fingerprint: string;
  tokensPerSecond: number;
  measuredAt: string;
}

/**
 * The node's capabilities, with the generation speed of the model it serves from the cache when
 * the fingerprint matches, or measured now with `model.measure()`. A node that serves no model
 * itself (a cluster worker) reports a speed of 0.
 */
export async function capabilities(o: {
  home: string;
  cache: string;
  engine: Engine;
  threads: number;
  hardware: Hardware;
  model?: MeasuredModel;
}): Promise<Capabilities> {
  const speed = o.model ? await modelSpeed(o, o.model) : { tokensPerSecond: 0, measuredAt: new Date().toISOString() };
  const disk = await statfs(o.cache);
  return {
    ...o.hardware,
    threads: o.threads,
    freeDiskBytes: disk.bavail * disk.bsize,
    engineVariant: o.engine.variant,
    tokensPerSecond: speed.tokensPerSecond,
    measuredAt: speed.measuredAt,
  };
}

/** The served model's speed, kept in `capabilities.json` until what it was measured on changes. */
async function modelSpeed(o: { home: string; engine: Engine; threads: number; hardware: Hardware }, model: MeasuredModel): Promise<Cached> {
  const fingerprint = createHash("sha256")
    .update(JSON.stringify([o.hardware, o.engine.tag, o.engine.variant, model.sha256, o.threads]))
    .digest("hex");
  const file = join(o.home, "capabilities.json");
  const cached = JSON.parse(await readFile(file, "utf8").catch(() => "null")) as Cached | null;
  if (cached?.fingerprint === fingerprint) return cached;
  const measured = { fingerprint, tokensPerSecond: await model.measure(), measuredAt: new Date().toISOString() };
  await writeFileAtomic(file, `${JSON.stringify(measured, null, 2)}\n`);
  return measured;
}

/** Decode speed of the running llama-server on a fixed request (temperature 0, 64 tokens). */
export async function measureSpeed(llamaUrl: string, apiKey: string): Promise<number> {
  const res = await fetch(`${llamaUrl}/completion`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ prompt: "The history of computing", n_predict: 64, temperature: 0, ignore_eos: true, cache_prompt: false }),
  });
  if (!res.ok) throw new SharedLLMError("engine", `the engine failed its speed measurement: HTTP ${res.status}`);
  const body = (await res.json()) as { timings?: { predicted_per_second?: number } };
  return body.timings?.predicted_per_second ?? 0;
}
