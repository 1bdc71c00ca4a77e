import { describe, expect, it } from "vitest";
import { withRequiredFields } from "./openaiFields.js";

describe("the fields OpenAI's schema requires", () => {
  it("are null where the engine left them out, and kept where it sent them", () => {
    const chat = withRequiredFields({
      object: "chat.completion",
      choices: [
        { index: 0, finish_reason: "stop", message: { role: "assistant", content: "hi" } },
        {
          index: 1,
          finish_reason: "stop",
          logprobs: { content: [], refusal: null },
          message: { role: "assistant", content: "", refusal: "no" },
        },
      ],
    });
    expect(chat.choices).toEqual([
      { index: 0, finish_reason: "stop", logprobs: null, message: { role: "assistant", content: "hi", refusal: null } },
      {
        index: 1,
        finish_reason: "stop",
        logprobs: { content: [], refusal: null },
        message: { role: "assistant", content: "", refusal: "no" },
      },
    ]);
    const completion = withRequiredFields({ object: "text_completion", choices: [{ index: 0, text: "x", finish_reason: "length" }] });
    expect(completion.choices).toEqual([{ index: 0, text: "x", finish_reason: "length", logprobs: null }]);
  });
});
