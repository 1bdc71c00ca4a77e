/**
 * How much memory serving a model takes: the weights (the GGUF file) plus the KV
 * cache for every slot's context (f16 keys and values for every layer, from the
 * GGUF metadata read with node-llama-cpp) plus room for compute buffers.
 */
import { stat } from "node:fs/promises";
import { readGgufFileInfo } from "node-llama-cpp";

/** llama.cpp's compute and output buffers on CPU, roughly; generous for small models. */
const OVERHEAD_BYTES = 256 * 2 ** 20;

export async function estimateServingMemory(modelPath: string, contextTokens: number): Promise<number> {
  const { size } = await stat(modelPath);
  const info = await readGgufFileInfo(modelPath, { readTensorInfo: false });
  const meta = info.metadata as unknown as Record<string, unknown> & { general: { architecture: string } };
  const arch = meta[meta.general.architecture] as
    | { block_count?: number; embedding_length?: number; attention?: { head_count?: number; head_count_kv?: number } }
    | undefined;
  const layers = arch?.block_count ?? 0;
  const embd = arch?.embedding_length ?? 0;
  const heads = arch?.attention?.head_count ?? 1;
  const kvHeads = arch?.attention?.head_count_kv ?? heads;
  const kvBytesPerToken = 2 * layers * ((embd * kvHeads) / heads) * 2;
  return size + kvBytesPerToken * contextTokens + OVERHEAD_BYTES;
}

export const GiB = 2 ** 30;
