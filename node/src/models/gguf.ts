/**
 * What a model's GGUF file says about its size: the figures its header declares, the KV cache they
 * imply, the memory serving it takes, and its per-layer layout for placement over a cluster.
 *
 * A GGUF comes from wherever its source points, so its header is untrusted input: counts and
 * lengths are checked against limits far above any real model (and against the file's own size)
 * before node-llama-cpp's reader builds arrays from them, and the architecture figures that size
 * memory (layers, widths, heads, context) are checked after. A header outside them is refused with
 * a GgufRefused error that names the figure. Everything here is sized from those bounded figures.
 */
import { open, stat } from "node:fs/promises";
import { type GgufFileInfo, readGgufFileInfo } from "node-llama-cpp";
import { z } from "zod";
import { SharedLLMError } from "../errors.js";

/** Limits on what a header may declare; each is far above the largest released model. */
export const GGUF_LIMITS = {
  tensors: 65_536,
  metadataEntries: 65_536,
  /** elements in one metadata array (a tokenizer's vocabulary is the largest, ~256k) */
  arrayLength: 16 * 2 ** 20,
  /** bytes of one string (keys, token texts, chat templates) */
  stringBytes: 16 * 2 ** 20,
  /** GGML_MAX_DIMS */
  tensorDimensions: 4,
  layers: 4_096,
  embeddingLength: 1 << 20,
  heads: 1 << 16,
  contextLength: 1 << 24,
} as const;

export class GgufRefused extends SharedLLMError {
  override name = "GgufRefused";
  constructor(path: string, what: string) {
    super("model", `${path} is not a usable GGUF model: ${what}; get the model from a source you trust`);
  }
}

/** The architecture figures that size a model's memory, each bounded. */
export interface GgufFigures {
  architecture: string;
  layers: number;
  embeddingLength: number;
  heads: number;
  kvHeads: number;
  contextLength?: number;
}

const count = (max: number) => z.number().int().min(1).max(max);
const architectureSchema = z.object({
  block_count: count(GGUF_LIMITS.layers),
  embedding_length: count(GGUF_LIMITS.embeddingLength),
  context_length: count(GGUF_LIMITS.contextLength).optional(),
  attention: z.object({ head_count: count(GGUF_LIMITS.heads).optional(), head_count_kv: count(GGUF_LIMITS.heads).optional() }).optional(),
});

/**
 * Reads a GGUF header with node-llama-cpp once its counts and lengths are known to be bounded,
 * and returns it with its architecture figures checked.
 */
export async function readGgufHeader(path: string, o: { tensors: boolean }): Promise<{ info: GgufFileInfo; figures: GgufFigures }> {
  await checkGgufCounts(path);
  const info = await readGgufFileInfo(path, { readTensorInfo: o.tensors, logWarnings: false });
  const meta = info.metadata as unknown as Record<string, unknown> & { general?: { architecture?: unknown } };
  const architecture = meta.general?.architecture;
  if (typeof architecture !== "string") throw new GgufRefused(path, "general.architecture is missing");
  const parsed = architectureSchema.safeParse(meta[architecture]);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new GgufRefused(path, `${architecture}.${issue?.path.join(".")} ${issue?.message ?? "is out of bounds"}`);
  }
  const a = parsed.data;
  const heads = a.attention?.head_count ?? 1;
  const kvHeads = a.attention?.head_count_kv ?? heads;
  if (kvHeads > heads) throw new GgufRefused(path, `${architecture}.attention.head_count_kv (${kvHeads}) exceeds head_count (${heads})`);
  return {
    info,
    figures: {
      architecture,
      layers: a.block_count,
      embeddingLength: a.embedding_length,
      heads,
      kvHeads,
      contextLength: a.context_length,
    },
  };
}

/** Bytes of KV cache one layer holds per token of context: f16 keys and values over the K/V heads. */
export function kvBytesPerTokenPerLayer(f: GgufFigures): number {
  return 2 * ((f.embeddingLength * f.kvHeads) / f.heads) * 2;
}

/** llama.cpp's compute and output buffers on CPU, roughly; generous for small models. */
const OVERHEAD_BYTES = 256 * 2 ** 20;

/**
 * How much memory serving a model takes: the weights (the GGUF file) plus the KV cache for every
 * slot's context plus room for compute buffers.
 */
export async function estimateServingMemory(modelPath: string, contextTokens: number): Promise<number> {
  const { size } = await stat(modelPath);
  const { figures: f } = await readGgufHeader(modelPath, { tensors: false });
  return size + f.layers * kvBytesPerTokenPerLayer(f) * contextTokens + OVERHEAD_BYTES;
}

/** A model's layout for placement over a cluster's members. */
export interface ModelLayout {
  /** weight bytes of each repeating layer (blk.N) */
  layerBytes: number[];
  /** KV cache bytes each layer needs for the configured context */
  kvBytesPerLayer: number;
}

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

/**
 * A model's layout from its tensor records (no weights are loaded): bytes per repeating layer
 * and the KV cache per layer for `contextTokens`.
 */
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
  if (layerBytes.some((b) => b === 0) || size <= 0) throw new GgufRefused(modelPath, "cannot read its layer layout");
  return { layerBytes, kvBytesPerLayer: kvBytesPerTokenPerLayer(f) * contextTokens };
}

/** GGUF value types (gguf.h) and the bytes of each fixed-size one. */
const FIXED_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const STRING = 8;
const ARRAY = 9;

/**
 * Walks the header's metadata and tensor records without keeping any of it, checking every count
 * and length against GGUF_LIMITS and against the bytes the file has left.
 */
export async function checkGgufCounts(path: string): Promise<void> {
  const file = await open(path, "r");
  try {
    const { size } = await file.stat();
    const chunk = Buffer.alloc(1 << 20);
    let chunkAt = 0;
    let chunkLength = 0;
    let at = 0;
    const ensure = async (n: number) => {
      if (at + n > size) throw new GgufRefused(path, "the header runs past the end of the file");
      if (at >= chunkAt && at + n <= chunkAt + chunkLength) return;
      chunkAt = at;
      chunkLength = (await file.read(chunk, 0, chunk.length, at)).bytesRead;
    };
    const u32 = async () => {
      await ensure(4);
      const v = chunk.readUInt32LE(at - chunkAt);
      at += 4;
      return v;
    };
    const u64 = async (what: string, max: number) => {
      await ensure(8);
      const v = chunk.readBigUInt64LE(at - chunkAt);
      at += 8;
      if (v > BigInt(max)) throw new GgufRefused(path, `${what} is ${v} (at most ${max})`);
      return Number(v);
    };
    const skip = (n: number, what: string) => {
      if (at + n > size) throw new GgufRefused(path, `${what} runs past the end of the file`);
      at += n;
    };
    const string = async (what: string) => skip(await u64(`the length of ${what}`, GGUF_LIMITS.stringBytes), what);
    const value = async (type: number, what: string): Promise<void> => {
      if (type === STRING) return string(what);
      const fixed = FIXED_BYTES[type];
      if (fixed !== undefined) return skip(fixed, what);
      if (type !== ARRAY) throw new GgufRefused(path, `${what} has unknown value type ${type}`);
      const elementType = await u32();
      const length = await u64(`the length of ${what}`, GGUF_LIMITS.arrayLength);
      const elementBytes = FIXED_BYTES[elementType];
      if (elementBytes !== undefined) return skip(length * elementBytes, what);
      if (elementType !== STRING) throw new GgufRefused(path, `${what} is an array of type ${elementType}`);
      for (let i = 0; i < length; i++) await string(what);
    };

    await ensure(8);
    if (chunk.toString("latin1", 0, 4) !== "GGUF") throw new GgufRefused(path, "it does not start with GGUF");
    at = 4;
    const version = await u32();
    if (version < 2 || version > 3) throw new GgufRefused(path, `GGUF version ${version} is not 2 or 3`);
    const tensors = await u64("the tensor count", GGUF_LIMITS.tensors);
    const entries = await u64("the metadata entry count", GGUF_LIMITS.metadataEntries);
    for (let i = 0; i < entries; i++) {
      await string("a metadata key");
      await value(await u32(), `metadata entry ${i}`);
    }
    for (let i = 0; i < tensors; i++) {
      await string("a tensor name");
      const dims = await u32();
      if (dims > GGUF_LIMITS.tensorDimensions) throw new GgufRefused(path, `tensor ${i} has ${dims} dimensions`);
      for (let d = 0; d < dims; d++) await u64(`a dimension of tensor ${i}`, size * 8);
      skip(4 + 8, `tensor ${i}`);
    }
  } finally {
    await file.close();
  }
}
