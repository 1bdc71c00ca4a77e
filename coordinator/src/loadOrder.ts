/**
 * The nodes serving one model, kept in the order `pickNode` ranks them (fleet.ts: least
 * outstanding work per slot with its penalties, then faster, then more slots, then this replica's
 * own nodes, then connected first), so that choosing a node walks from the front and stops at
 * the first that may take the job: a few steps, where a scan of 10,000 nodes took p50 1.4 ms,
 * p99 17 ms (control-plane bench, bench/METHODOLOGY.md). Each node's place is kept from a
 * snapshot of what ranks it; the fleet moves it (`set`) whenever any of that changes (its load,
 * speed, loaded models, suspicion, a failure's cool-off). A cool-off ends with time, not with an
 * event: a node ranked while cooling off is ranked again once it has ended, before the next
 * choice.
 *
 * The order is sorted blocks (at most 2 * BLOCK entries each): moving a node is two binary
 * searches and two short splices.
 */
import { eligible, type NodeView, rankOf } from "./fleet.js";

const BLOCK = 64;

/** A node's place: what ranked it when it was last set. */
interface Entry {
  readonly node: NodeView;
  rank: number;
  tokensPerSecond: number;
  slots: number;
  order: number;
}

/** pickNode's order: lower rank, then faster, then more slots, then connected first. */
function before(a: Entry, b: Entry): boolean {
  if (a.rank !== b.rank) return a.rank < b.rank;
  if (a.tokensPerSecond !== b.tokensPerSecond) return a.tokensPerSecond > b.tokensPerSecond;
  if (a.slots !== b.slots) return a.slots > b.slots;
  return a.order < b.order;
}

export class LoadOrder<T extends NodeView = NodeView> {
  private blocks: Entry[][] = [];
  private readonly entries = new Map<T, Entry>();
  /** nodes ranked with a cool-off's penalty: ranked again once it has ended */
  private readonly cooling = new Set<T>();

  constructor(readonly model: string) {}

  get size(): number {
    return this.entries.size;
  }

  /** Puts a node in its place for what ranks it now (a node already here moves, if it must). */
  set(node: T, now: number): void {
    const rank = rankOf(node, this.model, now);
    const old = this.entries.get(node);
    if (old && old.rank === rank && old.tokensPerSecond === node.tokensPerSecond && old.slots === node.slots && old.order === node.order) {
      return;
    }
    if (old) this.take(old);
    const entry: Entry = { node, rank, tokensPerSecond: node.tokensPerSecond, slots: node.slots, order: node.order };
    this.entries.set(node, entry);
    this.put(entry);
    if (node.coolingUntil > now) this.cooling.add(node);
    else this.cooling.delete(node);
  }

  delete(node: T): void {
    const entry = this.entries.get(node);
    if (!entry) return;
    this.entries.delete(node);
    this.cooling.delete(node);
    this.take(entry);
  }

  /**
   * The node pickNode would pick among these at `now`: the first in order that accepts jobs, has
   * queue room, is not excluded and passes `allow`.
   */
  first(now: number, exclude: ReadonlySet<string> | undefined, allow?: (n: T) => boolean): T | undefined {
    for (const node of this.cooling) if (node.coolingUntil <= now) this.set(node, now);
    for (const block of this.blocks) {
      for (const { node } of block) {
        if (eligible(node, this.model, exclude) && (!allow || allow(node as T))) return node as T;
      }
    }
    return undefined;
  }

  /** The nodes in order (for tests). */
  *[Symbol.iterator](): IterableIterator<T> {
    for (const block of this.blocks) for (const e of block) yield e.node as T;
  }

  /** The index of the first block whose last entry is not before `e` (blocks.length when none). */
  private blockOf(e: Entry): number {
    let lo = 0;
    let hi = this.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const block = this.blocks[mid] as Entry[];
      if (before(block[block.length - 1] as Entry, e)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The index in `block` of the first entry not before `e`. */
  private static within(block: Entry[], e: Entry): number {
    let lo = 0;
    let hi = block.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (before(block[mid] as Entry, e)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private put(e: Entry): void {
    if (!this.blocks.length) {
      this.blocks.push([e]);
      return;
    }
    const b = Math.min(this.blockOf(e), this.blocks.length - 1);
    const block = this.blocks[b] as Entry[];
    block.splice(LoadOrder.within(block, e), 0, e);
    if (block.length > 2 * BLOCK) this.blocks.splice(b + 1, 0, block.splice(BLOCK));
  }

  private take(e: Entry): void {
    const b = this.blockOf(e);
    const block = this.blocks[b];
    const at = block ? LoadOrder.within(block, e) : -1;
    if (block?.[at] === e) block.splice(at, 1);
    else {
      // not where its key says (two nodes sharing a connection number): found by identity
      this.removeByIdentity(e);
      return;
    }
    if (!block.length) this.blocks.splice(b, 1);
  }

  private removeByIdentity(e: Entry): void {
    for (let b = 0; b < this.blocks.length; b++) {
      const block = this.blocks[b] as Entry[];
      const at = block.indexOf(e);
      if (at < 0) continue;
      block.splice(at, 1);
      if (!block.length) this.blocks.splice(b, 1);
      return;
    }
  }
}
