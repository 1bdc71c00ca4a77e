import { describe, expect, it } from "vitest";
import { meteredUsage, RelayedText } from "./usage.js";

const chunk = (delta: Record<string, unknown>) => JSON.stringify({ choices: [{ index: 0, delta }] });

describe("RelayedText", () => {
  it("counts the UTF-8 bytes of streamed content, reasoning and tool calls, and nothing else", () => {
    const r = new RelayedText();
    r.addChunk(chunk({ role: "assistant", content: null }));
    r.addChunk(chunk({ content: "héllo" })); // é is two bytes
    r.addChunk(chunk({ reasoning_content: "ab" }));
    r.addChunk(JSON.stringify({ choices: [{ index: 0, text: "xyz" }] }));
    r.addChunk(JSON.stringify({ choices: [], usage: { completion_tokens: 99 } }));
    r.addChunk("not json");
    r.addChunk('{"choices": [1, null, "x"]}');
    expect(r.bytes).toBe(6 + 2 + 3);
    r.addChunk(chunk({ tool_calls: [{ function: { name: "f", arguments: '{"a":1}' } }] }));
    expect(r.bytes).toBe(11 + 1 + 7 + 16);
  });

  it("counts a whole response's message", () => {
    const r = new RelayedText();
    r.addBody({ choices: [{ message: { role: "assistant", content: "four" } }] });
    expect(r.bytes).toBe(4);
  });
});

describe("meteredUsage", () => {
  const bounds = { promptTokens: 100, generationLimit: 50, relayedBytes: 10 };

  it("keeps an honest node's figures", () => {
    expect(meteredUsage({ prompt_tokens: 30, completion_tokens: 8, total_tokens: 38 }, bounds)).toEqual({
      prompt_tokens: 30,
      completion_tokens: 8,
      total_tokens: 38,
    });
  });

  it("cuts inflated figures to the prompt bound, the generation limit and the relayed text", () => {
    expect(meteredUsage({ prompt_tokens: 1e6, completion_tokens: 1e6, total_tokens: 2e6 }, bounds)).toEqual({
      prompt_tokens: 100,
      completion_tokens: 26,
      total_tokens: 126,
    });
    expect(
      meteredUsage({ prompt_tokens: 1, completion_tokens: 1e6, total_tokens: 0 }, { ...bounds, relayedBytes: 1e6 }).completion_tokens,
    ).toBe(50);
  });

  it("allows the tokens of a matched stop string, which are generated but not relayed", () => {
    const u = { prompt_tokens: 1, completion_tokens: 40, total_tokens: 41 };
    expect(meteredUsage(u, { ...bounds, stop: ["END OF STORY"] }).completion_tokens).toBe(10 + 12 + 16);
    expect(meteredUsage(u, { ...bounds, stop: "\n\n" }).completion_tokens).toBe(10 + 2 + 16);
  });
});
