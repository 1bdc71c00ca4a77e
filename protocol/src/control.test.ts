import { describe, expect, it } from "vitest";
import { decodeChunkFrame, encodeChunkFrame, MAX_TOKENS_PER_CHUNK } from "./control.js";

describe("chunk frames", () => {
  it("round-trip an event with its token ids or count", () => {
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":1}', [1, 2]))).toEqual({ jobId: "job_1", data: '{"a":1}', tokens: [1, 2] });
    expect(decodeChunkFrame(encodeChunkFrame("job_1", "{}", 3))).toEqual({ jobId: "job_1", data: "{}", tokens: 3 });
  });

  it("refuse data that spans lines: it would inject events into the client's stream", () => {
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":\n1}\n\ndata: {"injected":true}', [1]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("job_1", '{"a":1}\r', [1]))).toBeUndefined();
  });

  it("refuse malformed or unbounded token fields", () => {
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", [-1]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", [2 ** 31]))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", new Array(MAX_TOKENS_PER_CHUNK + 1).fill(1)))).toBeUndefined();
    expect(decodeChunkFrame(encodeChunkFrame("j", "{}", MAX_TOKENS_PER_CHUNK + 1))).toBeUndefined();
  });
});
