/**
 * A model's layout for placement, read from its GGUF header with node-llama-cpp's reader (no
 * weights are loaded): bytes per repeating layer and the KV cache per layer.
 */
import { stat } from "node:fs/promises";
import { GgufRefused, readGgufHeader } from "../models/ggufHeader.js";
import type { ModelLayout } from "./placement.js";

/** Bytes per element of the common ggml types (block size / block bytes), for the last tensor only. */
const BYTES_PER_ELEMENT: Record<number, number> = {
  0: 4,
  1: 2,
  2: 18 / 32,
  3: 20 / 32,
  6: 22 / 32,
  7: 24 / 32,
  8: 34 / 32,
  12: 144 / 256,
  13: 176 / 256,
  14: 210 / 256,
  30: 2,
};

export async function readModelLayout(modelPath: string, contextTokens: number): Promise<ModelLayout> {
  const { info, figures: f } = await readGgufHeader(modelPath, { tensors: true });
  const tensors = [...(info.fullTensorInfo ?? info.tensorInfo ?? [])].sort((a, b) => Number(a.fileOffset) - Number(b.fileOffset));
  const { size } = await stat(modelPath);
  // a tensor's size is the distance to the next one (alignment included); the last one from its shape
  const sizes = new Map<string, number>();
  tensors.forEach((t, i) => {
    const next = tensors[i + 1];
    const elements = t.dimensions.reduce((a: number, d) => a * Number(d), 1);
    sizes.set(t.name, next ? Number(next.fileOffset) - Number(t.fileOffset) : Math.ceil(elements * (BYTES_PER_ELEMENT[t.ggmlType] ?? 1)));
  });
  const layerBytes = Array.from({ length: f.layers }, () => 0);
  for (const [name, bytes] of sizes) {
    const m = /^blk\.(\d+)\./.exec(name);
    if (m && Number(m[1]) >= f.layers) throw new GgufRefused(modelPath, `tensor ${name} is past block_count ${f.layers}`);
    if (m) layerBytes[Number(m[1])] = (layerBytes[Number(m[1])] ?? 0) + bytes;
  }
  // f16 keys and values
  const kvBytesPerLayer = 2 * ((f.embeddingLength * f.kvHeads) / f.heads) * 2 * contextTokens;
  if (layerBytes.some((b) => b === 0) || size <= 0) throw new Error(`${modelPath}: cannot read its layer layout`);
  return { layerBytes, kvBytesPerLayer };
}
