import { HttpRequestError, TimeoutError } from "viem";
import { describe, expect, it } from "vitest";
import { LogRanges } from "./chainLogs.js";

describe("LogRanges", () => {
  it("halves the range while the node refuses it, and keeps the smaller range", async () => {
    const ranges = new LogRanges(64n);
    const asked: [bigint, bigint][] = [];
    const query = async (from: bigint, to: bigint) => {
      asked.push([from, to]);
      if (to - from >= 20n) throw new Error("query exceeds 20 blocks");
      return [from];
    };
    expect(await ranges.read(0n, 39n, query)).toEqual([0n, 16n, 32n]);
    expect(asked.slice(0, 3)).toEqual([
      [0n, 39n],
      [0n, 31n],
      [0n, 15n],
    ]);
    asked.length = 0;
    await ranges.read(40n, 55n, query);
    expect(asked).toEqual([[40n, 55n]]);
  });

  it("does not shrink for a node that is slow, unreachable or rate-limiting: the failure is the caller's to retry", async () => {
    for (const err of [
      new TimeoutError({ body: {}, url: "http://rpc" }),
      new HttpRequestError({ url: "http://rpc" }),
      new HttpRequestError({ url: "http://rpc", status: 429 }),
      new HttpRequestError({ url: "http://rpc", status: 503 }),
    ]) {
      const ranges = new LogRanges(64n);
      let calls = 0;
      await expect(
        ranges.read(0n, 100n, async () => {
          calls++;
          throw err;
        }),
      ).rejects.toBe(err);
      expect(calls).toBe(1);
    }
    // an HTTP 4xx answer is a refusal, as public nodes send for too large a span
    const ranges = new LogRanges(64n);
    let calls = 0;
    const got = await ranges.read(0n, 10n, async (from) => {
      if (calls++ === 0) throw new HttpRequestError({ url: "http://rpc", status: 413 });
      return [from];
    });
    expect(got).toEqual([0n]);
  });
});
