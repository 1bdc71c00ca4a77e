import { UNTOLD_TOKEN } from "@sharedllm/protocol";
import { describe, expect, it, vi } from "vitest";
import { Transcript } from "./transcript.js";

const chat = (delta: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    id: "chatcmpl-1",
    created: 7,
    model: "m",
    object: "chat.completion.chunk",
    choices: [{ index: 0, delta, finish_reason: null }],
    ...extra,
  });
const cmpl = (text: string, finish: string | null = null) =>
  JSON.stringify({
    id: "cmpl-9",
    created: 9,
    model: "other",
    object: "text_completion",
    choices: [{ text, index: 0, logprobs: null, finish_reason: finish }],
  });

function transcript(kind: "chat" | "completion", o: { resumable?: boolean; maxTokens?: number; stopBytes?: number } = {}) {
  return new Transcript({ kind, resumable: true, maxTokens: 1000, id: "job_t", model: "m", ...o });
}

describe("Transcript", () => {
  it("counts the UTF-8 bytes of streamed content, reasoning and tool calls, and nothing else", () => {
    const t = transcript("chat");
    t.add(chat({ role: "assistant", content: null }), [], false);
    t.add(chat({ content: "héllo" }), [1], false); // é is two bytes
    t.add(chat({ reasoning_content: "ab" }), [2], false);
    t.add(JSON.stringify({ choices: [{ index: 0, text: "xyz" }] }), [3], false);
    t.add(JSON.stringify({ choices: [], usage: { completion_tokens: 99 } }), [], false);
    t.add("not json", 0, false);
    t.add('{"choices": [1, null, "x"]}', 0, false);
    expect(t.bytes).toBe(6 + 2 + 3);
    t.add(chat({ tool_calls: [{ index: 0, id: "c1", function: { name: "f", arguments: '{"a":1}' } }] }), [4], false);
    expect(t.bytes).toBe(11 + 1 + 7 + 16);
    expect(t.tokens).toBe(4);
  });

  it("keeps the ids while every event tells them, then the text; a job with tool calls cannot continue", () => {
    const t = transcript("chat");
    t.add(chat({ content: "One" }), [10], false);
    t.add(chat({ content: ", two" }), [11, 12], false);
    expect(t.resume()).toEqual({ tokens: [10, 11, 12], text: "" });
    // an event whose ids were not all told: its text, and all text after it, is carried as text
    t.add(chat({ content: " é" }), 2, false);
    t.add(chat({ content: "!" }), [13], false);
    expect(t.resume()).toEqual({ tokens: [10, 11, 12], text: " é!" });
    expect(t.tokens).toBe(6);
    expect(transcript("chat", { resumable: false }).resume()).toBeUndefined();
    const tools = transcript("chat");
    tools.add(chat({ tool_calls: [{ index: 0, id: "c", function: { name: "f", arguments: "{}" } }] }), [1], false);
    expect(tools.resume()).toBeUndefined();
  });

  it("counts untold tokens only as far as the text explains them: split characters, and the end with a stop string", () => {
    const t = transcript("chat", { stopBytes: 4 });
    t.add(chat({ content: "ab" }), 5, false); // plain text: at most one token without its id, as many as a told one
    expect(t.tokens).toBe(1);
    t.add(chat({ content: "日" }), 9, false); // three bytes: at most three tokens, and one
    expect(t.tokens).toBe(1 + 4);
    t.add(cmpl("", "stop"), 9, false); // the end, and a stop string's tokens (four bytes)
    expect(t.tokens).toBe(1 + 4 + 5);
    expect(t.told).toEqual(new Array(10).fill(UNTOLD_TOKEN));
  });

  it("reshapes a continuing unit's completion events into the job's stream, and holds back its usage", () => {
    const t = transcript("chat");
    expect(t.add(chat({ role: "assistant", content: null }), [], false)).toContain('"role"');
    t.add(chat({ content: "Hi" }), [5], false);
    const relayed = t.add(cmpl(" there"), [6], true);
    expect(JSON.parse(relayed as string)).toEqual({
      id: "chatcmpl-1",
      created: 7,
      model: "m",
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta: { content: " there" }, finish_reason: null }],
    });
    expect(t.add(cmpl(""), [], true)).toBeUndefined();
    // the engine's last event: the finish and its own usage (which counts its re-prefill) together
    const last = JSON.parse(cmpl("", "stop"));
    last.usage = { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 };
    const relayedLast = JSON.parse(t.add(JSON.stringify(last), 1, true) as string);
    expect(relayedLast.choices[0]).toEqual({ index: 0, delta: {}, finish_reason: "stop" });
    expect(relayedLast.usage).toBeUndefined();
    expect(t.body({ prompt_tokens: 1 })).toMatchObject({
      id: "chatcmpl-1",
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: "Hi there" }, finish_reason: "stop", logprobs: null }],
    });
  });

  it("assembles a whole completion, and a whole chat with tool calls merged by index", () => {
    const c = transcript("completion");
    c.add(cmpl("a"), [1], false);
    c.add(cmpl("b", "length"), [2], false);
    expect(c.body({ prompt_tokens: 1 })).toMatchObject({
      id: "cmpl-9",
      object: "text_completion",
      choices: [{ text: "ab", index: 0, finish_reason: "length" }],
      usage: { prompt_tokens: 1 },
    });
    const t = transcript("chat");
    t.add(chat({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "get", arguments: '{"c' } }] }), [1], false);
    t.add(chat({ tool_calls: [{ index: 0, function: { arguments: 'ity":1}' } }] }), [2], false);
    t.add(chat({}, {}).replace('"finish_reason":null', '"finish_reason":"tool_calls"'), [], false);
    expect((t.body({}).choices as { message: unknown }[])[0]?.message).toEqual({
      role: "assistant",
      content: null,
      tool_calls: [{ id: "call_1", type: "function", function: { name: "get", arguments: '{"city":1}' } }],
    });
  });

  it("holds back any unit's usage (the job's, metered, goes out at the end)", () => {
    const t = transcript("completion");
    const last = JSON.parse(cmpl("!", "stop"));
    last.usage = { prompt_tokens: 1e6, completion_tokens: 1e6, total_tokens: 2e6 };
    const relayed = JSON.parse(t.add(JSON.stringify(last), [3], false) as string);
    expect(relayed.choices[0]).toMatchObject({ text: "!", finish_reason: "stop" });
    expect(relayed.usage).toBeUndefined();
    expect(t.add(JSON.stringify({ choices: [], usage: { prompt_tokens: 1e6 } }), [], false)).toBeUndefined();
  });

  it("reads hostile events without throwing, and names a response no unit named", () => {
    const t = transcript("chat");
    const hostile = [
      JSON.stringify({ choices: [{ delta: { tool_calls: [null, 7, { index: 1e9, function: null }] } }] }),
      JSON.stringify({ choices: [{ delta: null, logprobs: { content: Array.from({ length: 200_000 }, () => 0) } }] }),
      JSON.stringify({ choices: [null] }),
      JSON.stringify({ choices: "x", id: 5 }),
      "[1,2]",
    ];
    for (const e of hostile) expect(() => t.add(e, 0, true)).not.toThrow();
    expect(t.body({})).toMatchObject({ id: "job_t", model: "m", object: "chat.completion" });
  });

  it("will not carry on more tokens than the job may have", () => {
    const t = transcript("completion", { maxTokens: 3 });
    t.add(cmpl("abc"), [1, 2, 3], false);
    expect(t.resume()).toEqual({ tokens: [1, 2, 3], text: "" });
    t.add(cmpl("d"), [4], false);
    expect(t.resume()).toBeUndefined();
  });

  it("says when units stream more than the job may have, by tokens, events or text, and keeps logprobs bounded", () => {
    const byTokens = transcript("completion", { maxTokens: 10 });
    for (let i = 0; i < 74; i++) byTokens.add(cmpl("a"), [i], false);
    expect(byTokens.overrun).toBeUndefined();
    byTokens.add(cmpl("a"), [74], false);
    expect(byTokens.overrun).toMatch(/75 tokens; the job allows 10/);
    expect(byTokens.resume()).toBeUndefined();
    // events that tell no tokens (empty deltas) are counted as events
    const byEvents = transcript("chat", { maxTokens: 10 });
    for (let i = 0; i <= 2 * 74; i++) byEvents.add(chat({ content: "" }), [], false);
    expect(byEvents.overrun).toMatch(/149 events/);
    // text that no token count explains
    const byText = transcript("chat", { maxTokens: 10 });
    byText.add(chat({ content: "x".repeat(74 * 1024 + 1) }), [1], false);
    expect(byText.overrun).toMatch(/bytes of text/);
    const logprobs = transcript("chat", { maxTokens: 10 });
    const entries = Array.from({ length: 500 }, () => ({ token: "a", logprob: -1 }));
    logprobs.add(JSON.stringify({ choices: [{ index: 0, delta: { content: "a" }, logprobs: { content: entries } }] }), [1], false);
    const whole = logprobs.body({}) as { choices: { logprobs: { content: unknown[] } }[] };
    expect(whole.choices[0]?.logprobs.content.length).toBe(74);
  });

  it("reads events shaped as the last one without parsing them, to the same effect as parsing them", () => {
    const decoy = (delta: string, z: string) =>
      `{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content" : "${delta}"},"finish_reason":null}],"z":{"content":"${z}"}}`;
    const events: [string, readonly number[] | number, boolean][] = [
      [chat({ role: "assistant", content: null }), [], false],
      [chat({ content: "Hel" }), [1], false],
      [chat({ content: "lo" }), [2], false],
      [chat({ content: " wörld" }), 2, false],
      [chat({ content: 'say "hi"' }), [3], false],
      [chat({ content: "x" }), [4], false],
      [chat({ content: "y" }), [5], false],
      [chat({ content: "a\nb" }), [6], false],
      [chat({ content: "c" }), [7], false],
      // the shape of the last, not JSON (a raw control character): no text
      [chat({ content: "c" }).replace('"c"', '"\u0001"'), [8], false],
      // another key named content, and the content spaced: its place is not learned
      [decoy("a", "a"), [9], false],
      [decoy("a", "EVIL"), [10], false],
      [chat({ content: "u" }, { usage: { completion_tokens: 3 } }), [11], false],
      [chat({ content: "v" }), [12], false],
      [chat({ content: "w" }), [13], false],
      [chat({ content: "v" }, { x: 1 }), [14], false],
      [chat({ content: "p" }), [15], true],
      [chat({ content: "q" }), [16], true],
      [chat({ content: "" }), [17], true],
      [chat({}, { choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }), [18], true],
    ];
    // the same events, each with other trailing spaces than the last: never of the last one's shape, always parsed
    const fast = transcript("chat");
    const parsed = transcript("chat");
    const parse = vi.spyOn(JSON, "parse");
    let parsedFast = 0;
    for (const [i, [data, tokens, continued]] of events.entries()) {
      parse.mockClear();
      const relayed = fast.add(data, tokens, continued);
      if (parse.mock.calls.length === 0) parsedFast++;
      const reference = parsed.add(data + " ".repeat(1 + (i % 2)), tokens, continued);
      expect(relayed, `event ${i}`).toEqual(continued ? reference : reference?.trimEnd());
    }
    parse.mockRestore();
    // lo, wörld, y, w, q and the empty content: each after an event of its shape with plain content
    expect(parsedFast).toBe(6);
    expect(fast.tokens).toBe(parsed.tokens);
    expect(fast.bytes).toBe(parsed.bytes);
    expect(fast.told).toEqual(parsed.told);
    expect(fast.resume()).toEqual(parsed.resume());
    const usage = { prompt_tokens: 1, completion_tokens: 18, total_tokens: 19 };
    expect(fast.body(usage)).toEqual(parsed.body(usage));
    expect((fast.body(usage).choices as { message: { content: string } }[])[0]?.message.content).toBe('Hello wörldsay "hi"xya\nbcaauvwvpq');
  });
});
