/**
 * What this machine can do: CPU, memory, GPU and VRAM (node-llama-cpp's
 * detection), free disk, engine variant, and a measured generation speed on the
 * served model. The speed is measured once and kept in
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

interface Cached {
  fingerprint: string;
  tokensPerSecond: number;
  measuredAt: string;
}

/**
 * The node's capabilities, with the generation speed from the cache when the
 * fingerprint matches, or measured now with `measure()`.
 */
export async function capabilities(o: {
  home: string;
  cache: string;
  engine: Engine;
  modelSha256: string;
  threads: number;
  hardware: Hardware;
  measure: () => Promise<number>;
}): Promise<Capabilities> {
  const fingerprint = createHash("sha256")
    .update(JSON.stringify([o.hardware, o.engine.tag, o.engine.variant, o.modelSha256, o.threads]))
    .digest("hex");
  const file = join(o.home, "capabilities.json");
  let cached = JSON.parse(await readFile(file, "utf8").catch(() => "null")) as Cached | null;
  if (cached?.fingerprint !== fingerprint) {
    cached = { fingerprint, tokensPerSecond: await o.measure(), measuredAt: new Date().toISOString() };
    await writeFileAtomic(file, `${JSON.stringify(cached, null, 2)}\n`);
  }
  const disk = await statfs(o.cache);
  return {
    ...o.hardware,
    threads: o.threads,
    freeDiskBytes: disk.bavail * disk.bsize,
    engineVariant: o.engine.variant,
    tokensPerSecond: cached.tokensPerSecond,
    measuredAt: cached.measuredAt,
  };
}

/** Decode speed of the running llama-server on a fixed request (temperature 0, 64 tokens). */
export async function measureSpeed(llamaUrl: string, apiKey: string): Promise<number> {
  const res = await fetch(`${llamaUrl}/completion`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ prompt: "The history of computing", n_predict: 64, temperature: 0, ignore_eos: true, cache_prompt: false }),
  });
  if (!res.ok) throw new Error(`speed measurement failed: HTTP ${res.status}`);
  const body = (await res.json()) as { timings?: { predicted_per_second?: number } };
  return body.timings?.predicted_per_second ?? 0;
}
