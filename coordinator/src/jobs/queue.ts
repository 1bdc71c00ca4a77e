/**
 * Jobs waiting for a unit (docs/architecture.md, "Serving units and a job's states"). When no unit can take a
 * job now (every node serving its model paused, cooling off, queued to its depth, or on its way
 * to another replica as the one holding it stops), the job waits its turn, first come first
 * served, a bounded time. It is handed a unit in the same turn as one has room, so no two
 * waiting jobs are given one place. A model whose last node left a moment ago (a replica
 * stopping, a node reconnecting) is waited for the same way before a request is refused.
 */
import type { Fleet } from "../fleet.js";

/** How long a request waits, in all, for a unit with room and for a model whose nodes just left, by default. */
export const QUEUE_WAIT_MS = 10_000;

/** Jobs that may wait at once; one more is refused at once (503). */
export const MAX_WAITING = 1024;

interface Waiter {
  model: string;
  take: () => boolean;
  settle: (taken: boolean) => void;
}

/** How a job waits (`Queue.wait`). */
export interface WaitOptions {
  /** when it stops waiting, ms epoch */
  until: number;
  signal: AbortSignal;
  /** it continues mid-stream: it goes before new jobs, and a full queue does not refuse it (its client is reading its output) */
  first?: boolean;
  /** whether no unit could ever take it (none it may run on serves its model): then it does not wait */
  hopeless?: () => boolean;
}

export class Queue {
  /** jobs continuing mid-stream, served first, then new jobs: each in arrival order */
  private readonly continuing = new Set<Waiter>();
  private readonly waiting = new Set<Waiter>();
  /** model id -> its jobs waiting in each line */
  private readonly continuingFor = new Map<string, number>();
  private readonly waitingFor = new Map<string, number>();
  /** requests waiting for their model's nodes to come back (returns) */
  private returning = 0;
  private unwatch: (() => void) | undefined;

  constructor(
    private readonly fleet: Fleet,
    readonly waitMs = QUEUE_WAIT_MS,
    private readonly max = MAX_WAITING,
  ) {}

  /** requests waiting now */
  get size(): number {
    return this.continuing.size + this.waiting.size + this.returning;
  }

  /**
   * A job's turn for a unit of `model`: `take` dispatches it to one if one can take it now, and
   * says whether it did. With no job of its line (or one before) waiting for the model, it takes
   * one at once if it can; else it waits behind them. Resolves true once it has one; false at
   * `until`, when the queue is full, when it is hopeless or when `signal` aborts.
   */
  wait(model: string, take: () => boolean, o: WaitOptions): Promise<boolean> {
    const { first = false, signal } = o;
    const ahead = (this.continuingFor.get(model) ?? 0) + (first ? 0 : (this.waitingFor.get(model) ?? 0));
    if (ahead === 0 && !signal.aborted && take()) return Promise.resolve(true);
    const left = o.until - Date.now();
    if (signal.aborted || left <= 0 || (!first && this.size >= this.max) || o.hopeless?.()) return Promise.resolve(false);
    const line = first ? this.continuing : this.waiting;
    const count = first ? this.continuingFor : this.waitingFor;
    count.set(model, (count.get(model) ?? 0) + 1);
    return new Promise((resolve) => {
      const gone = () => waiter.settle(false);
      const timer = setTimeout(gone, left);
      const waiter: Waiter = {
        model,
        take,
        settle: (taken) => {
          clearTimeout(timer);
          signal.removeEventListener("abort", gone);
          line.delete(waiter);
          const n = (count.get(model) ?? 1) - 1;
          if (n) count.set(model, n);
          else count.delete(model);
          if (this.continuing.size + this.waiting.size === 0) {
            this.unwatch?.();
            this.unwatch = undefined;
          }
          resolve(taken);
        },
      };
      signal.addEventListener("abort", gone, { once: true });
      line.add(waiter);
      this.unwatch ??= this.fleet.watch(() => this.serve());
    });
  }

  /**
   * Waits, until `until` (ms epoch), for `model` to be served again when its last node left within
   * the wait (a replica stopping hands its nodes to another; a node reconnects): whether it is served.
   */
  async returns(model: string, until: number, signal: AbortSignal): Promise<boolean> {
    const left = until - Date.now();
    if (left <= 0 || this.size >= this.max || !this.fleet.leftWithin(model, this.waitMs)) return false;
    this.returning++;
    try {
      return (await this.fleet.until(() => this.fleet.servesModel(model) || undefined, left, signal)) === true;
    } finally {
      this.returning--;
    }
  }

  /**
   * Hands each waiting job, continuing ones first, then first come first served, a unit that can
   * take it now; a model no unit has room for is passed over.
   */
  private serve(): void {
    const full = new Set<string>();
    for (const line of [this.continuing, this.waiting]) {
      for (const w of line) {
        if (full.has(w.model)) continue;
        let taken = false;
        try {
          taken = w.take();
        } catch {
          // a unit that cannot be handed the job (its channel just closed): the job's wait ends, as a wait that ran out
          w.settle(false);
          continue;
        }
        if (taken) w.settle(true);
        else if (!this.fleet.pick(w.model)) full.add(w.model);
      }
    }
  }
}
