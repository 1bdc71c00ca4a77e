import type { Hex } from "viem";
import { describe, expect, it } from "vitest";
import { forkPoint, readIsConsistent } from "./reorg.js";

const h = (n: number, fork = "a") => `0x${fork}${n.toString(16).padStart(63, "0")}` as Hex;

describe("forkPoint", () => {
  const kept = [1, 4, 5, 9, 12].map((n) => ({ number: BigInt(n), hash: h(n) }));

  it("is the newest kept block the chain still has, asking from the newest down", async () => {
    const asked: bigint[] = [];
    // the chain forked after block 5: 9 and 12 are now other blocks
    const fork = await forkPoint(kept, async (n) => {
      asked.push(n);
      return n <= 5n ? h(Number(n)) : h(Number(n), "b");
    });
    expect(fork).toEqual({ number: 5n, hash: h(5) });
    expect(asked).toEqual([12n, 9n, 5n]);
  });

  it("counts a block above the chain's head as gone", async () => {
    const fork = await forkPoint(kept, async (n) => (n <= 4n ? h(Number(n)) : undefined));
    expect(fork?.number).toBe(4n);
  });

  it("is undefined when the fork is deeper than every kept block", async () => {
    expect(await forkPoint(kept, async (n) => h(Number(n), "c"))).toBeUndefined();
    expect(await forkPoint([], async () => h(0))).toBeUndefined();
  });

  it("compares hashes in any case", async () => {
    const fork = await forkPoint([{ number: 3n, hash: h(3).toUpperCase().replace("0X", "0x") as Hex }], async (n) => h(Number(n)));
    expect(fork?.number).toBe(3n);
  });
});

describe("readIsConsistent", () => {
  const blocks = new Map([
    [3n, h(3)],
    [7n, h(7)],
  ]);
  const logs = [
    { blockNumber: 3n, blockHash: h(3) },
    { blockNumber: 7n, blockHash: h(7) },
  ];

  it("holds when every log's block is the chain's and the last block stayed", () => {
    expect(readIsConsistent(logs, blocks, { before: h(9), after: h(9) })).toBe(true);
  });

  it("fails when the last block changed during the read", () => {
    expect(readIsConsistent(logs, blocks, { before: h(9), after: h(9, "b") })).toBe(false);
  });

  it("fails when a log came from a block the chain has replaced", () => {
    expect(readIsConsistent([...logs, { blockNumber: 7n, blockHash: h(7, "b") }], blocks, { before: h(9), after: h(9) })).toBe(false);
  });
});
