import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { tempPaths } from "@sharedllm/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolvePaths } from "../paths.js";
import { estimateServingMemory, GgufRefused, readModelLayout } from "./gguf.js";
import { DEFAULT_MODEL } from "./sources.js";
import { ModelStore } from "./store.js";

/** A GGUF v3 header (no tensors) with the given metadata entries, as a hostile source would serve it. */
function gguf(entries: Array<[string, Buffer]>): Buffer {
  const u32 = (v: number) => Buffer.from(new Uint32Array([v]).buffer);
  const u64 = (v: bigint) => Buffer.from(new BigUint64Array([v]).buffer);
  const str = (s: string) => Buffer.concat([u64(BigInt(Buffer.byteLength(s))), Buffer.from(s)]);
  return Buffer.concat([
    Buffer.from("GGUF"),
    u32(3),
    u64(0n),
    u64(BigInt(entries.length)),
    ...entries.map(([key, typedValue]) => Buffer.concat([str(key), typedValue])),
    Buffer.alloc(64),
  ]);
}
const U32 = (v: number) => Buffer.concat([Buffer.from(new Uint32Array([4, v]).buffer)]);
const STR = (s: string) =>
  Buffer.concat([Buffer.from(new Uint32Array([8]).buffer), Buffer.from(new BigUint64Array([BigInt(s.length)]).buffer), Buffer.from(s)]);
const llama = (blockCount: number) =>
  gguf([
    ["general.architecture", STR("llama")],
    ["llama.block_count", U32(blockCount)],
    ["llama.embedding_length", U32(576)],
    ["llama.attention.head_count", U32(9)],
  ]);

let dir: Awaited<ReturnType<typeof tempPaths>>;
beforeAll(async () => {
  dir = await tempPaths("sharedllm-gguf-");
});
afterAll(() => dir?.cleanup());

describe("serving memory estimate", () => {
  it("is the weights plus a KV cache that grows with the context", async () => {
    const path = await new ModelStore(resolvePaths().cache).path(DEFAULT_MODEL.id);
    const small = await estimateServingMemory(path, 1024);
    const large = await estimateServingMemory(path, 8192);
    expect(small).toBeGreaterThan(DEFAULT_MODEL.size);
    // SmolLM2-135M: 30 layers, 576-wide embeddings, 3 of 9 heads for K/V -> 2*30*192*2 bytes per token
    expect(large - small).toBe(2 * 30 * 192 * 2 * (8192 - 1024));
  });
});

describe("GGUF header bounds", () => {
  it("refuses a block_count of 2^31 with a clear error and without allocating for it", async () => {
    const path = join(dir.home, "hostile.gguf");
    await writeFile(path, llama(2 ** 31));
    const before = process.memoryUsage().heapUsed;
    await expect(readModelLayout(path, 4096)).rejects.toThrow(GgufRefused);
    await expect(readModelLayout(path, 4096)).rejects.toThrow(/llama\.block_count .*4096/);
    await expect(estimateServingMemory(path, 4096)).rejects.toThrow(/block_count/);
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(64 * 2 ** 20);
  });

  it("refuses a metadata array longer than the limit before reading it", async () => {
    const path = join(dir.home, "array.gguf");
    const array = Buffer.concat([Buffer.from(new Uint32Array([9, 4]).buffer), Buffer.from(new BigUint64Array([2n ** 40n]).buffer)]);
    await writeFile(path, gguf([["tokenizer.ggml.scores", array]]));
    await expect(estimateServingMemory(path, 4096)).rejects.toThrow(/the length of metadata entry 0 is 1099511627776/);
  });

  it("refuses a header whose strings run past the end of the file", async () => {
    const path = join(dir.home, "short.gguf");
    await writeFile(path, gguf([["general.architecture", STR("llama")]]).subarray(0, 40));
    await expect(estimateServingMemory(path, 4096)).rejects.toThrow(/past the end of the file/);
  });

  it("reads a real model's layout as before", async () => {
    const path = await new ModelStore(resolvePaths().cache).path(DEFAULT_MODEL.id);
    const layout = await readModelLayout(path, 1024);
    expect(layout.layerBytes).toHaveLength(30);
    expect(layout.kvBytesPerLayer).toBe(2 * 192 * 2 * 1024);
  });
});
