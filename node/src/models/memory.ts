/**
 * How much memory serving a model takes: the weights (the GGUF file) plus the KV
 * cache for every slot's context (f16 keys and values for every layer, from the
 * GGUF header, its figures bounded) plus room for compute buffers.
 */
import { stat } from "node:fs/promises";
import { readGgufHeader } from "./ggufHeader.js";

/** llama.cpp's compute and output buffers on CPU, roughly; generous for small models. */
const OVERHEAD_BYTES = 256 * 2 ** 20;

export async function estimateServingMemory(modelPath: string, contextTokens: number): Promise<number> {
  const { size } = await stat(modelPath);
  const { figures: f } = await readGgufHeader(modelPath, { tensors: false });
  const kvBytesPerToken = 2 * f.layers * ((f.embeddingLength * f.kvHeads) / f.heads) * 2;
  return size + kvBytesPerToken * contextTokens + OVERHEAD_BYTES;
}

export const GiB = 2 ** 30;
