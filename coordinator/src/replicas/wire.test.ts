import { describe, expect, it } from "vitest";
import { decodeStream, encodeStreamChunk, encodeStreamEvent, replicaSubjects, type StreamTarget } from "./wire.js";

function recorder() {
  const calls: unknown[][] = [];
  const target: StreamTarget = {
    running: (...a) => void calls.push(["running", ...a]),
    chunk: (...a) => void calls.push(["chunk", ...a]),
    prompted: (...a) => void calls.push(["prompted", ...a]),
    end: (...a) => void calls.push(["end", ...a]),
    error: (...a) => void calls.push(["error", ...a]),
  };
  return { calls, target };
}

describe("replica wire", () => {
  it("keeps sites apart on one NATS server without naming their join token", () => {
    const a = replicaSubjects("token-a");
    const b = replicaSubjects("token-b");
    expect(a.fleet).not.toBe(b.fleet);
    expect(a.node("0xabc", "job")).toMatch(/^sharedllm\.[0-9a-f]{16}\.node\.0xabc\.job$/);
    expect(JSON.stringify(a)).not.toContain("token-a");
  });

  it("decodes a batch of several jobs' chunks and events in order", () => {
    const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
    const text = [
      encodeStreamEvent({ e: "prompt", j: "job_1", n: 3 }),
      encodeStreamChunk("job_1", '{"x":"a b"}', [7, 8]),
      encodeStreamChunk("job_2", "{}", 4),
      encodeStreamEvent({ e: "end", j: "job_1", usage, resumed: 2 }),
      encodeStreamEvent({ e: "error", j: "job_2", message: "gone", retryable: true, cause: "node_lost" }),
      encodeStreamEvent({ e: "running", jobs: ["job_3"] }),
    ].join("\n");
    const { calls, target } = recorder();
    expect(decodeStream(text, target)).toBe(0);
    expect(calls).toEqual([
      ["prompted", "job_1", 3],
      ["chunk", "job_1", '{"x":"a b"}', [7, 8]],
      ["chunk", "job_2", "{}", 4],
      ["end", "job_1", usage, 2],
      ["error", "job_2", { message: "gone", retryable: true, status: undefined, cause: "node_lost" }],
      ["running", ["job_3"]],
    ]);
  });

  it("skips and counts lines it cannot read, and reads on", () => {
    const text = [
      "not json",
      '{"e":"end","j":"job_1"}',
      "\u0001job_1\tx,y",
      "{}",
      encodeStreamEvent({ e: "prompt", j: "job_3", n: 1 }),
    ].join("\n");
    const { calls, target } = recorder();
    // the bad chunk header takes the next line as its data: both go
    expect(decodeStream(text, target)).toBe(3);
    expect(calls).toEqual([["prompted", "job_3", 1]]);
  });
});
