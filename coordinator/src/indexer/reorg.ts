/**
 * Where a chain reorganisation forked from what the history indexer read: the newest block it
 * indexed whose hash the chain still has at that height. Everything indexed above it came from
 * blocks the chain no longer has and is deleted; reading resumes after it.
 */
import type { Hex } from "viem";

export interface KeptBlock {
  number: bigint;
  hash: Hex;
}

/**
 * The newest of `kept` (any order) that the chain still has, asking `hashAt` (the chain's hash at
 * a height, undefined above its head) from the newest down; undefined when none of them is
 * left (the reorganisation went deeper than the hashes kept: read again from the start).
 */
export async function forkPoint(
  kept: readonly KeptBlock[],
  hashAt: (n: bigint) => Promise<Hex | undefined>,
): Promise<KeptBlock | undefined> {
  const newestFirst = [...kept].sort((a, b) => (a.number > b.number ? -1 : a.number < b.number ? 1 : 0));
  for (const b of newestFirst) {
    const hash = await hashAt(b.number);
    if (hash?.toLowerCase() === b.hash.toLowerCase()) return b;
  }
  return undefined;
}

/**
 * Whether a read of blocks is consistent (pure): every log's block hash is the hash the chain
 * gave for its height, and the last block's hash did not change while the read went on.
 */
export function readIsConsistent(
  logs: readonly { blockNumber: bigint; blockHash: Hex }[],
  blocks: ReadonlyMap<bigint, Hex>,
  tip: { before: Hex; after: Hex },
): boolean {
  if (tip.before.toLowerCase() !== tip.after.toLowerCase()) return false;
  return logs.every((l) => blocks.get(l.blockNumber)?.toLowerCase() === l.blockHash.toLowerCase());
}
