/**
 * Reading a contract's logs over a span of blocks the way public RPC nodes allow: in ranges of at
 * most `maxRange` blocks, halved whenever the node refuses one (many cap the span or the number of
 * results), the smaller range kept for later reads; and only up to a head `confirmations` blocks
 * below the newest, read uncached (viem caches getBlockNumber for its polling interval otherwise).
 * The federation's registry reader and the history indexer both read through it.
 */
import type { PublicClient } from "viem";

/** The smallest range the reader halves down to before a refusal is an error. */
export const MIN_LOG_RANGE = 16n;
/** The span of one log query unless told otherwise. */
export const DEFAULT_LOG_RANGE = 10_000n;

/** The newest block a reader staying `confirmations` below the head may read (uncached). */
export async function confirmedHead(client: PublicClient, confirmations = 0): Promise<bigint> {
  return (await client.getBlockNumber({ cacheTime: 0 })) - BigInt(confirmations);
}

/**
 * Whether a failed log query is the node refusing its span or result count (an error answer, or
 * an HTTP 4xx but 429), not the node being unreachable, slow or rate-limiting: only a refusal
 * makes the range smaller for good.
 */
function refusesRange(err: unknown): boolean {
  const transient = (e: unknown): boolean => {
    const x = e as { name?: string; status?: number } | undefined;
    if (x?.name === "TimeoutError") return true;
    if (x?.name !== "HttpRequestError") return false;
    return x.status === undefined || x.status === 429 || x.status >= 500;
  };
  const walk = (err as { walk?: (fn: (e: unknown) => boolean) => unknown } | undefined)?.walk;
  return !(transient(err) || (typeof walk === "function" && Boolean(walk.call(err, transient))));
}

export class LogRanges {
  private range: bigint;

  constructor(maxRange: bigint = DEFAULT_LOG_RANGE) {
    this.range = maxRange;
  }

  /**
   * Every log `query` returns for blocks `from` to `to` (inclusive), queried in ranges the node
   * accepts. A refusal at the smallest range is thrown.
   */
  async read<T>(from: bigint, to: bigint, query: (fromBlock: bigint, toBlock: bigint) => Promise<readonly T[]>): Promise<T[]> {
    const out: T[] = [];
    for (let start = from; start <= to; ) {
      const end = start + this.range - 1n < to ? start + this.range - 1n : to;
      const got = await query(start, end).catch((err: unknown) => {
        if (this.range <= MIN_LOG_RANGE || !refusesRange(err)) throw err;
        return undefined;
      });
      if (!got) {
        // the node refuses the range: a smaller one, kept for the next reads
        this.range /= 2n;
        continue;
      }
      out.push(...got);
      start = end + 1n;
    }
    return out;
  }
}
