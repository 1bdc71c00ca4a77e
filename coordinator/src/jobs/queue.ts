/**
 * Jobs waiting for a unit (docs/architecture.md, "Serving units and a job's states"). When no unit can take a
 * job now (every node serving its model paused, cooling off, queued to its depth, or on its way
 * to another replica as the one holding it stops), the job waits its turn, first come first
 * served, a bounded time. It is handed a unit in the same turn as one has room, so no two
 * waiting jobs are given one place. A model whose last node left a moment ago (a replica
 * stopping, a node reconnecting) is waited for the same way before a request is refused.
 */
import type { Fleet } from "../fleet.js";

/** How long a job waits for a unit with room, and for a model whose nodes just left, by default. */
export const QUEUE_WAIT_MS = 10_000;

/** Jobs that may wait at once; one more is refused at once (503). */
export const MAX_WAITING = 1024;

interface Waiter {
  model: string;
  take: () => boolean;
  settle: (taken: boolean) => void;
}

export class Queue {
  private readonly waiting = new Set<Waiter>();
  private unwatch: (() => void) | undefined;

  constructor(
    private readonly fleet: Fleet,
    readonly waitMs = QUEUE_WAIT_MS,
    private readonly max = MAX_WAITING,
  ) {}

  /** jobs waiting now */
  get size(): number {
    return this.waiting.size;
  }

  /**
   * Waits its turn for a unit of `model`: `take` dispatches the job to one if one can take it now,
   * and says whether it did. Resolves true once it has; false when the wait runs out, the queue is
   * full or `signal` aborts.
   */
  wait(model: string, take: () => boolean, signal: AbortSignal): Promise<boolean> {
    if (signal.aborted || this.waiting.size >= this.max) return Promise.resolve(false);
    return new Promise((resolve) => {
      const gone = () => waiter.settle(false);
      const timer = setTimeout(gone, this.waitMs);
      const waiter: Waiter = {
        model,
        take,
        settle: (taken) => {
          clearTimeout(timer);
          signal.removeEventListener("abort", gone);
          this.waiting.delete(waiter);
          if (this.waiting.size === 0) {
            this.unwatch?.();
            this.unwatch = undefined;
          }
          resolve(taken);
        },
      };
      signal.addEventListener("abort", gone, { once: true });
      this.waiting.add(waiter);
      this.unwatch ??= this.fleet.watch(() => this.serve());
    });
  }

  /**
   * Waits for `model` to be served again when its last node left within the wait (a replica
   * stopping hands its nodes to another; a node reconnects): whether it is served.
   */
  async returns(model: string, signal: AbortSignal): Promise<boolean> {
    if (!this.fleet.leftWithin(model, this.waitMs)) return false;
    return (await this.fleet.until(() => this.fleet.servesModel(model) || undefined, this.waitMs, signal)) === true;
  }

  /** Hands each waiting job, first come first served, a unit that can take it now; a model no unit has room for is passed over. */
  private serve(): void {
    const full = new Set<string>();
    for (const w of this.waiting) {
      if (full.has(w.model)) continue;
      if (w.take()) w.settle(true);
      else if (!this.fleet.pick(w.model)) full.add(w.model);
    }
  }
}
