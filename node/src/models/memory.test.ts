import { describe, expect, it } from "vitest";
import { resolvePaths } from "../paths.js";
import { estimateServingMemory } from "./memory.js";
import { DEFAULT_MODEL } from "./sources.js";
import { ModelStore } from "./store.js";

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
