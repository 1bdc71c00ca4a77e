import { describe, expect, it } from "vitest";
import {
  CONTROL_PROTOCOL_VERSION,
  decodeChunkFrame,
  encodeChunkFrame,
  MAX_MODEL_ID,
  MAX_SERVED_MODELS,
  MAX_SLOTS,
  MAX_TOKENS_PER_CHUNK,
  nodeFrameSchema,
  parseFrame,
} from "./control.js";

describe("chunk frames", () => {
  it("round-trip an event with its token ids or count", () => {
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":1}', [1, 2]))).toEqual({ jobId: "job_1", data: '{"a":1}', tokens: [1, 2] });
    expect(decodeChunkFrame(encodeChunkFrame("job_1", "{}", 3))).toEqual({ jobId: "job_1", data: "{}", tokens: 3 });
  });

  it("refuse data that spans lines: it would inject events into the client's stream", () => {
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":\n1}\n\ndata: {"injected":true}', [1]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":1}\r', [1]))).toBeUndefined();
  });

  it("read token ids as Number reads them, plain digits or not", () => {
    const ids = (field: string) => decodeChunkFrame(`\u0001j\t${field}\n{}`)?.tokens;
    expect(ids("0,7,2147483647")).toEqual([0, 7, 2147483647]);
    expect(ids("007")).toEqual([7]);
    for (const field of ["1,,2", "1,", ",1", " 1", "+5", "1.0", "0x10", "1e3", "", "~3"]) {
      const general = field === "" ? [] : field[0] === "~" ? Number(field.slice(1)) : field.split(",").map(Number);
      expect(ids(field)).toEqual(general);
    }
    expect(ids("1,2147483648")).toBeUndefined();
    expect(ids("99999999999999999999999")).toBeUndefined();
    expect(ids("1,a")).toBeUndefined();
  });

  it("refuse malformed or unbounded token fields", () => {
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", [-1]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", [2 ** 31]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", new Array(MAX_TOKENS_PER_CHUNK + 1).fill(1)))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", MAX_TOKENS_PER_CHUNK + 1))).toBeUndefined();
  });
});

describe("what a node announces", () => {
  const model = (id: string) => ({ id, sha256: "0".repeat(64), contextSize: 2048 });
  const hello = (models: unknown[]) =>
    JSON.stringify({
      type: "hello",
      protocol: CONTROL_PROTOCOL_VERSION,
      nodeId: "0xn",
      engine: { tag: "t", variant: "v" },
      models,
      slots: 2,
    });

  it("is bounded: at most MAX_SERVED_MODELS models, ids of at most MAX_MODEL_ID characters", () => {
    const many = Array.from({ length: MAX_SERVED_MODELS }, (_, i) => model(`m${i}`));
    expect(parseFrame(nodeFrameSchema, hello(many)).ok).toBe(true);
    expect(parseFrame(nodeFrameSchema, hello([...many, model("one-more")]))).toMatchObject({
      ok: false,
      reason: expect.stringContaining("models"),
    });
    expect(parseFrame(nodeFrameSchema, hello([model("x".repeat(MAX_MODEL_ID + 1))])).ok).toBe(false);
    const models = JSON.stringify({ type: "models", models: [...many, model("one-more")] });
    expect(parseFrame(nodeFrameSchema, models).ok).toBe(false);
    // at most MAX_SLOTS slots: a node cannot say it takes any number of jobs at once
    const slots = (n: number) => parseFrame(nodeFrameSchema, JSON.stringify({ ...JSON.parse(hello([model("m")])), slots: n }));
    expect(slots(MAX_SLOTS).ok).toBe(true);
    expect(slots(MAX_SLOTS + 1)).toMatchObject({ ok: false, reason: expect.stringContaining("slots") });
  });
});
