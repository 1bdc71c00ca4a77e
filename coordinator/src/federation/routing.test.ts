import { type AdvertisedModel, MAX_TOKENS_PER_CHUNK } from "@sharedllm/protocol";
import { describe, expect, it } from "vitest";
import { choosePeer, forwardedLine, LineReader, MAX_LINE_BYTES, type PeerOffer, parseLine, peerFailure, peerMessage } from "./routing.js";

const model = (id: string, freeSlots: number, completion = "2000", prompt = "1000"): AdvertisedModel => ({
  id,
  sha256: "ab".repeat(32),
  freeSlots,
  pricePer1k: { prompt, completion },
});

const offer = (address: string, models: AdvertisedModel[], o: Partial<PeerOffer> = {}): PeerOffer => ({
  address,
  inbound: true,
  models,
  latencyMs: 5,
  active: 0,
  ...o,
});

describe("choosePeer", () => {
  it("takes only a peer that serves the model, takes jobs, and has a slot left after what was sent it", () => {
    const offers = [
      offer("0xa", [model("other", 4)]),
      offer("0xb", [model("m", 4)], { inbound: false }),
      offer("0xc", [model("m", 2)], { active: 2 }),
    ];
    expect(choosePeer(offers, "m")).toBeUndefined();
    expect(choosePeer([...offers, offer("0xd", [model("m", 1)])], "m")?.address).toBe("0xd");
  });

  it("prefers the cheaper peer, then the nearer, then the lower address", () => {
    const cheap = offer("0xc", [model("m", 1, "1000")], { latencyMs: 50 });
    const near = offer("0xb", [model("m", 1)], { latencyMs: 1 });
    const far = offer("0xa", [model("m", 1)], { latencyMs: 9 });
    expect(choosePeer([far, near, cheap], "m")?.address).toBe("0xc");
    expect(choosePeer([far, near], "m")?.address).toBe("0xb");
    expect(choosePeer([offer("0xf", [model("m", 1)]), offer("0xe", [model("m", 1)])], "m")?.address).toBe("0xe");
  });

  it("keeps within the price limit and the caller's say", () => {
    const dear = offer("0xa", [model("m", 1, "3000")]);
    const fair = offer("0xb", [model("m", 1, "2000", "1000")]);
    expect(choosePeer([dear, fair], "m", { prompt: 1000n, completion: 2000n })?.address).toBe("0xb");
    expect(choosePeer([dear, fair], "m", { prompt: 999n, completion: 2000n })).toBeUndefined();
    expect(choosePeer([dear, fair], "m", undefined, (a) => a !== "0xb")?.address).toBe("0xa");
  });
});

describe("LineReader", () => {
  it("reads lines split anywhere, events with ids or counts, then the end", () => {
    const text =
      forwardedLine({ c: 1, d: '{"x":1}', t: [5, 6] }) +
      forwardedLine({ c: 1, d: "{}", t: 2 }) +
      forwardedLine({ end: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } });
    const r = new LineReader();
    const got = [];
    for (let i = 0; i < text.length; i += 7) got.push(...r.push(text.slice(i, i + 7)));
    expect(got).toEqual([
      { c: 1, d: '{"x":1}', t: [5, 6] },
      { c: 1, d: "{}", t: 2 },
      { end: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } },
    ]);
    expect(r.partial).toBe(false);
    expect(r.push('{"c":1')).toEqual([]);
    expect(r.partial).toBe(true);
  });

  it("reads an error, and refuses what is not a line of the format", () => {
    expect(parseLine('{"error":{"message":"no","retryable":true,"status":503}}')).toEqual({
      error: { message: "no", retryable: true, status: 503 },
    });
    expect(() => parseLine("nope")).toThrow(/not JSON/);
    expect(() => parseLine('{"c":1,"d":"x","t":[-1]}')).toThrow(/tokens/);
    expect(() => parseLine('{"c":1,"t":1}')).toThrow(/text/);
    expect(() => parseLine('{"end":{"prompt_tokens":1}}')).toThrow(/usage/);
    expect(() => parseLine('{"what":1}')).toThrow(/no known kind/);
    expect(parseLine('{"p":12}')).toEqual({ p: 12 });
    for (const p of ["-1", "1.5", '"3"', String(2 ** 31)]) expect(() => parseLine(`{"p":${p}}`)).toThrow(/prompt count/);
  });

  it("refuses an event whose text spans lines: it would inject events into the client's stream", () => {
    expect(() => parseLine(JSON.stringify({ c: 1, d: '{"a":1}\n\ndata: {"injected":1}', t: 1 }))).toThrow(/spans lines/);
    expect(() => parseLine(JSON.stringify({ c: 1, d: '{"a":1}\r', t: 1 }))).toThrow(/spans lines/);
  });

  it("bounds token ids and counts as a node's chunk frames are bounded", () => {
    expect(() => parseLine(JSON.stringify({ c: 1, d: "{}", t: [2 ** 31] }))).toThrow(/tokens/);
    expect(() => parseLine(JSON.stringify({ c: 1, d: "{}", t: [1.5] }))).toThrow(/tokens/);
    expect(() => parseLine(JSON.stringify({ c: 1, d: "{}", t: 1e300 }))).toThrow(/tokens/);
    expect(() => parseLine(JSON.stringify({ c: 1, d: "{}", t: MAX_TOKENS_PER_CHUNK + 1 }))).toThrow(/tokens/);
    expect(() => parseLine(JSON.stringify({ c: 1, d: "{}", t: new Array(MAX_TOKENS_PER_CHUNK + 1).fill(0) }))).toThrow(/tokens/);
    expect(parseLine(JSON.stringify({ c: 1, d: "{}", t: [2 ** 31 - 1] }))).toEqual({ c: 1, d: "{}", t: [2 ** 31 - 1] });
  });

  it("reads a long line sent in small pieces in linear time, and still refuses one over the bound", () => {
    const r = new LineReader();
    const piece = "x".repeat(64);
    const t0 = performance.now();
    // ~1 MiB in 64-byte pieces: a rescan of the buffer on each would take ~8e9 steps
    for (let i = 0; i < (MAX_LINE_BYTES - 1024) / piece.length; i++) r.push(piece);
    expect(performance.now() - t0).toBeLessThan(2_000);
    expect(() => r.push("x".repeat(2048))).toThrow(/longer than/);
    const ok = new LineReader();
    expect(ok.push('{"c":1,"d":"{}",')).toEqual([]);
    expect(ok.push('"t":1}\n{"c":1,"d":"[]","t":[2]}\n{"end"')).toEqual([
      { c: 1, d: "{}", t: 1 },
      { c: 1, d: "[]", t: [2] },
    ]);
    expect(ok.partial).toBe(true);
  });
});

describe("a peer's failure", () => {
  it("reaches the user cleaned and short; only 400 and 413 are the client's", () => {
    expect(peerMessage(`evil\u001b[31m\r\nline${"y".repeat(1000)}`)).toMatch(/^evil \[31m liney+…$/);
    expect(peerMessage("x".repeat(1000)).length).toBeLessThanOrEqual(301);
    expect(peerFailure(400, "bad")).toEqual({ message: "bad", retryable: false, status: 400 });
    expect(peerFailure(413, "big")).toEqual({ message: "big", retryable: false, status: 413 });
    for (const status of [401, 402, 404, 418, 500, 302, undefined])
      expect(peerFailure(status, "no")).toEqual({ message: "no", retryable: true });
  });
});

describe("choosePeer, on what a peer may send", () => {
  it("skips a model whose free slots are not a number", () => {
    expect(choosePeer([offer("0xa", [{ ...model("m", 1), freeSlots: Number.NaN }])], "m")).toBeUndefined();
  });
});
