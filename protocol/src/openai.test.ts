import { describe, expect, it } from "vitest";
import { ApiError, ERROR_CATALOG } from "./errors.js";
import { chatCompletionRequestSchema, completionRequestSchema, describeZodError, MAX_TOKENS_LIMIT } from "./openai.js";

const chat = (extra: Record<string, unknown>) =>
  chatCompletionRequestSchema.safeParse({ model: "m", messages: [{ role: "user", content: "hi" }], ...extra });

describe("chat request schema", () => {
  it("accepts a minimal request and keeps unknown sampling fields for llama-server", () => {
    const r = chat({ top_k: 40, min_p: 0.05 });
    expect(r.success).toBe(true);
    expect(r.data).toMatchObject({ top_k: 40, min_p: 0.05 });
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
