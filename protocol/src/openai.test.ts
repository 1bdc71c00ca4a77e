import { describe, expect, it } from "vitest";
import { ApiError, ERROR_CATALOG } from "./errors.js";
import {
  asksForLogprobs,
  type ChatCompletionRequest,
  chatCompletionRequestSchema,
  completionRequestSchema,
  describeZodError,
  engineRequest,
  MAX_TOKENS_LIMIT,
} from "./openai.js";

const chat = (extra: Record<string, unknown>) =>
  chatCompletionRequestSchema.safeParse({ model: "m", messages: [{ role: "user", content: "hi" }], ...extra });

describe("chat request schema", () => {
  it("accepts a minimal request and tolerates unknown fields", () => {
    const r = chat({ top_k: 40, min_p: 0.05, mirostat: 2 });
    expect(r.success).toBe(true);
    expect(r.data).toMatchObject({ top_k: 40, min_p: 0.05, mirostat: 2 });
  });

  it.each([
    [{ messages: [] }, "messages"],
    [{ messages: "hi" }, "messages"],
    [{ model: 3 }, "model"],
    [{ max_tokens: -1 }, "max_tokens"],
    [{ max_tokens: 0 }, "max_tokens"],
    [{ max_tokens: 1.5 }, "max_tokens"],
    [{ max_tokens: MAX_TOKENS_LIMIT + 1 }, "max_tokens"],
    [{ temperature: "hot" }, "temperature"],
    [{ n: 2 }, "n"],
    [{ messages: [{ role: "wizard", content: "x" }] }, "messages[0].role"],
    // the engine fails on any tool but a function: the client's fault, not the node's
    [{ tools: [{ type: "x" }] }, "tools[0].type"],
    [{ tool_choice: { type: "x" } }, "tool_choice"],
  ])("rejects %j naming param %s", (extra, param) => {
    const r = chat(extra);
    expect(r.success).toBe(false);
    if (!r.success) expect(describeZodError(r.error).param).toBe(param);
  });

  it("requires model and messages", () => {
    const r = chatCompletionRequestSchema.safeParse({});
    expect(r.success).toBe(false);
  });
});

describe("completion request schema", () => {
  it("takes one prompt string", () => {
    expect(completionRequestSchema.safeParse({ model: "m", prompt: "Once" }).success).toBe(true);
    expect(completionRequestSchema.safeParse({ model: "m", prompt: ["a", "b"] }).success).toBe(false);
    expect(completionRequestSchema.safeParse({ model: "m" }).success).toBe(false);
  });
});

describe("error catalog", () => {
  it("gives every error an OpenAI-shaped body and its status", () => {
    for (const code of Object.keys(ERROR_CATALOG) as (keyof typeof ERROR_CATALOG)[]) {
      const e = new ApiError(code, "what to do");
      expect(e.toBody()).toEqual({ error: { message: "what to do", type: ERROR_CATALOG[code].type, code, param: null } });
      expect(e.status).toBe(ERROR_CATALOG[code].status);
    }
  });
});

describe("engine request", () => {
  it("forwards only allow-listed fields, with the coordinator's generation limit", () => {
    const r = chat({ max_tokens: 4, n_predict: 8010, n_cmpl: 3, id_slot: 1, top_k: 40, user: "u", stop: null });
    expect(r.success).toBe(true);
    const sent = engineRequest(r.data as ChatCompletionRequest, 4);
    expect(sent).toEqual({
      model: "m",
      messages: [{ role: "user", content: "hi" }],
      top_k: 40,
      max_tokens: 4,
      n_predict: 4,
    });
  });

  it("checks the sampling extensions it forwards", () => {
    for (const [extra, param] of [
      [{ top_k: -1 }, "top_k"],
      [{ min_p: 2 }, "min_p"],
    ] as const) {
      const r = chat(extra);
      expect(r.success).toBe(false);
      if (!r.success) expect(describeZodError(r.error).param).toBe(param);
    }
  });
});

describe("asksForLogprobs", () => {
  it("is true for logprobs: true and for a completion's count, 0 included; false when absent, null or false", () => {
    expect([true, 0, 5].map((logprobs) => asksForLogprobs({ logprobs }))).toEqual([true, true, true]);
    expect([undefined, null, false].map((logprobs) => asksForLogprobs({ logprobs }))).toEqual([false, false, false]);
  });
});
