import { describe, expect, it } from "vitest";
import { meteredUsage } from "./usage.js";

describe("meteredUsage", () => {
  const bounds = { promptTokens: 100, generationLimit: 50, relayedBytes: 1000, streamedTokens: 8 };

  it("charges the tokens the coordinator counted in the stream, and the node's prompt figure", () => {
    expect(meteredUsage(30, bounds)).toEqual({ prompt_tokens: 30, completion_tokens: 8, total_tokens: 38 });
  });

  it("cuts the prompt to its bound, and the count to the generation limit and the relayed text", () => {
    expect(meteredUsage(1e6, bounds).prompt_tokens).toBe(100);
    expect(meteredUsage(-5, bounds).prompt_tokens).toBe(0);
    expect(meteredUsage(1, { ...bounds, streamedTokens: 1e6 }).completion_tokens).toBe(50);
    expect(meteredUsage(1, { ...bounds, streamedTokens: 1e6, generationLimit: 1e6, relayedBytes: 10 }).completion_tokens).toBe(10 + 16);
  });

  it("allows the tokens of a matched stop string, which are generated but not relayed", () => {
    const b = { ...bounds, streamedTokens: 40, relayedBytes: 10 };
    expect(meteredUsage(1, { ...b, stop: ["END OF STORY"] }).completion_tokens).toBe(10 + 12 + 16);
    expect(meteredUsage(1, { ...b, stop: "\n\n" }).completion_tokens).toBe(10 + 2 + 16);
  });
});
