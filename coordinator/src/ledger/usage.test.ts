import { describe, expect, it } from "vitest";
import { meteredUsage } from "./usage.js";

describe("meteredUsage", () => {
  const bounds = { promptTokens: 100, generationLimit: 50, relayedBytes: 10, streamedTokens: 1000 };

  it("keeps an honest node's figures", () => {
    expect(meteredUsage({ prompt_tokens: 30, completion_tokens: 8, total_tokens: 38 }, bounds)).toEqual({
      prompt_tokens: 30,
      completion_tokens: 8,
      total_tokens: 38,
    });
  });

  it("cuts inflated figures to the prompt bound, the generation limit, the relayed text and the streamed tokens", () => {
    expect(meteredUsage({ prompt_tokens: 1e6, completion_tokens: 1e6, total_tokens: 2e6 }, bounds)).toEqual({
      prompt_tokens: 100,
      completion_tokens: 26,
      total_tokens: 126,
    });
    expect(
      meteredUsage({ prompt_tokens: 1, completion_tokens: 1e6, total_tokens: 0 }, { ...bounds, relayedBytes: 1e6 }).completion_tokens,
    ).toBe(50);
    expect(
      meteredUsage({ prompt_tokens: 1, completion_tokens: 40, total_tokens: 0 }, { ...bounds, relayedBytes: 1e6, streamedTokens: 12 })
        .completion_tokens,
    ).toBe(12 + 16);
  });

  it("allows the tokens of a matched stop string, which are generated but not relayed", () => {
    const u = { prompt_tokens: 1, completion_tokens: 40, total_tokens: 41 };
    expect(meteredUsage(u, { ...bounds, stop: ["END OF STORY"] }).completion_tokens).toBe(10 + 12 + 16);
    expect(meteredUsage(u, { ...bounds, stop: "\n\n" }).completion_tokens).toBe(10 + 2 + 16);
  });
});
