/**
 * Owner-first: whether the machine's owner needs it back. The owner is busy when processes that
 * are not the node's own (the daemon and its descendants: llama-server, rpc-server) keep the CPUs
 * busy over a window; a machine running on battery is its owner's too. Once neither has held for
 * a quiet period, the node serves again. Pure: it takes samples (ownerSignals.ts reads them from
 * Linux) and gives a verdict.
 */

export interface OwnerPolicy {
  /** share of the whole machine's CPU time (0..1) that others' demand must reach */
  threshold: number;
  /** over how long others' demand is averaged (ms); it must reach the threshold over a whole window */
  windowMs: number;
  /** how long neither condition must hold before the node takes jobs again (ms) */
  quietMs: number;
  /** how often the machine is sampled (ms) */
  sampleMs: number;
}

/** Half the machine, over a second sampled every 250 ms; back after a quiet minute. */
export const DEFAULT_OWNER_POLICY: OwnerPolicy = { threshold: 0.5, windowMs: 1_000, quietMs: 60_000, sampleMs: 250 };

/** Cumulative CPU time at one moment, in clock ticks (as /proc counts it). */
export interface CpuSample {
  /** when it was taken, ms (monotonic) */
  at: number;
  /** time the machine's CPUs were busy, all CPUs together */
  busy: number;
  /** busy and idle time: the elapsed time times the number of CPUs */
  total: number;
  /** the node's own processes' time (with that of their children that have ended) */
  own: number;
}

/** What the owner needs the machine for. */
export type OwnerNeed = "owner_busy" | "on_battery";

/**
 * Others' demand between two samples: the machine's busy time less the node's own, as a share of
 * the machine's CPU time in between (elapsed time times CPUs), 0..1.
 */
export function othersDemand(from: CpuSample, to: CpuSample): number {
  const elapsed = to.total - from.total;
  if (elapsed <= 0) return 0;
  const others = to.busy - from.busy - (to.own - from.own);
  return Math.min(1, Math.max(0, others / elapsed));
}

/** The owner-first verdict over a stream of samples. */
export class OwnerWatch {
  /** the newest sample at least a window old, then every later one */
  private readonly samples: CpuSample[] = [];
  private need: OwnerNeed | undefined = undefined;
  private lastHeldAt = Number.NEGATIVE_INFINITY;

  constructor(readonly policy: OwnerPolicy = DEFAULT_OWNER_POLICY) {}

  /** Takes one more sample; returns what the owner needs the machine for, or undefined when the node may serve. */
  observe(sample: CpuSample, onBattery: boolean): OwnerNeed | undefined {
    const { threshold, windowMs, quietMs } = this.policy;
    this.samples.push(sample);
    while (this.samples.length > 2 && (this.samples[1] as CpuSample).at <= sample.at - windowMs) this.samples.shift();
    const first = this.samples[0] as CpuSample;
    const busy = sample.at - first.at >= windowMs && othersDemand(first, sample) >= threshold;
    const held: OwnerNeed | undefined = onBattery ? "on_battery" : busy ? "owner_busy" : undefined;
    if (held) {
      this.need = held;
      this.lastHeldAt = sample.at;
    } else if (this.need && sample.at - this.lastHeldAt >= quietMs) {
      this.need = undefined;
    }
    return this.need;
  }
}
