/**
 * The owner's say over a node, whatever its role: paused (`node pause`), a contribution schedule,
 * draining before it leaves, and owner-first (the owner's own programs need the CPUs, or the
 * machine runs on battery). `decideAvailability` (pure) combines them into what the coordinator
 * is told; `OwnerControls` keeps the state, samples the machine and tells the control client of
 * each change. Stopping for the owner's sake (paused, owner-first) yields: the jobs in flight are
 * handed off at once, to be continued elsewhere, instead of finishing here.
 */
import type { AvailabilityReason } from "@sharedllm/protocol";
import type { Logger } from "pino";
import { onBattery, readCpuSample } from "./ownerSignals.js";
import { type CpuSample, DEFAULT_OWNER_POLICY, type OwnerNeed, type OwnerPolicy, OwnerWatch } from "./ownerWatch.js";
import { inSchedule, parseSchedule, type Window } from "./schedule.js";

/** Owner-first settings; any left out take DEFAULT_OWNER_POLICY's. */
export interface OwnerFirstOptions extends Partial<OwnerPolicy> {
  /** where the power supplies are described; default /sys/class/power_supply */
  powerSupplyDir?: string;
}

/** What the owner wants now. */
export interface OwnerState {
  paused: boolean;
  draining: boolean;
  /** inside the contribution schedule (always, without one) */
  inSchedule: boolean;
  /** owner-first's verdict */
  need: OwnerNeed | undefined;
}

export interface AvailabilityDecision {
  accepting: boolean;
  reason: AvailabilityReason;
}

/** Reasons that yield: the owner wants the machine now, so jobs in flight are handed off. */
const YIELDS: ReadonlySet<AvailabilityReason> = new Set(["paused", "owner_busy", "on_battery"]);

/** One availability from the owner's wishes; the first that holds wins: draining, paused, owner-first, schedule. */
export function decideAvailability(s: OwnerState): AvailabilityDecision {
  if (s.draining) return { accepting: false, reason: "draining" };
  if (s.paused) return { accepting: false, reason: "paused" };
  if (s.need) return { accepting: false, reason: s.need };
  if (!s.inSchedule) return { accepting: false, reason: "schedule" };
  return { accepting: true, reason: "resumed" };
}

/**
 * Whether moving from `before` to `after` hands off the jobs in flight: when the node stops for a
 * reason that yields (or, `always`, for any reason) and had not already yielded.
 */
export function handsOff(before: AvailabilityDecision | undefined, after: AvailabilityDecision, always = false): boolean {
  if (after.accepting || (!always && !YIELDS.has(after.reason))) return false;
  if (!before || before.accepting) return true;
  return !(always || YIELDS.has(before.reason));
}

export interface OwnerControlsOptions {
  /** told each change; `handOff`: the jobs in flight are given up now */
  apply: (accepting: boolean, reason: AvailabilityReason, handOff: boolean) => void;
  /** when the owner lets this machine serve, e.g. "weekdays 17:00-08:00" (default: always) */
  schedule?: string;
  paused?: boolean;
  /** owner-first: yield while the owner needs the machine; absent: off */
  ownerFirst?: OwnerFirstOptions;
  /** a worker gives up its work whenever it stops taking work (heads' jobs run on its rpc-server) */
  handOffAlways?: boolean;
  /** the root of the node's own processes; default this process */
  ownPid?: number;
  /** the machine's readings; default: /proc and /sys (tests give fakes) */
  sample?: () => CpuSample;
  battery?: () => Promise<boolean>;
  logger: Logger;
}

/** How often the contribution schedule is looked at. */
const SCHEDULE_CHECK_MS = 30_000;

export class OwnerControls {
  private readonly state: Omit<OwnerState, "inSchedule">;
  private readonly windows: Window[] | undefined;
  private readonly watch: OwnerWatch | undefined;
  private current: AvailabilityDecision | undefined;
  private timers: NodeJS.Timeout[] = [];
  private sampling = false;

  constructor(private readonly o: OwnerControlsOptions) {
    this.windows = o.schedule ? parseSchedule(o.schedule) : undefined;
    this.state = { paused: o.paused ?? false, draining: false, need: undefined };
    this.watch = o.ownerFirst && new OwnerWatch({ ...DEFAULT_OWNER_POLICY, ...withoutUndefined(o.ownerFirst) });
  }

  /** The availability told last. */
  get availability(): AvailabilityDecision {
    return this.current ?? this.decide();
  }

  /** Tells the current availability and starts watching the schedule and the machine. */
  start(): void {
    this.apply();
    if (this.windows) this.timers.push(setInterval(() => this.apply(), SCHEDULE_CHECK_MS));
    if (this.watch) {
      const pid = this.o.ownPid ?? process.pid;
      const sample = this.o.sample ?? (() => readCpuSample(pid));
      const dir = this.o.ownerFirst?.powerSupplyDir;
      const battery = this.o.battery ?? (() => onBattery(dir));
      try {
        sample();
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message }, "owner-first cannot read this machine's CPU time (it needs Linux /proc): off");
        return;
      }
      const timer = setInterval(() => void this.observe(sample, battery), this.watch.policy.sampleMs);
      this.timers.push(timer);
    }
  }

  pause(): void {
    this.state.paused = true;
    this.apply();
  }

  resume(): void {
    this.state.paused = false;
    this.apply();
  }

  /** No new jobs from now on, for good (the node leaves). */
  drain(): void {
    this.state.draining = true;
    this.apply();
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private async observe(sample: () => CpuSample, battery: () => Promise<boolean>) {
    if (this.sampling || !this.watch) return;
    this.sampling = true;
    try {
      const need = this.watch.observe(sample(), await battery());
      if (need !== this.state.need) {
        this.state.need = need;
        this.apply();
      }
    } catch (err) {
      this.o.logger.debug({ err: (err as Error).message }, "owner-first sample failed");
    } finally {
      this.sampling = false;
    }
  }

  private decide(): AvailabilityDecision {
    return decideAvailability({ ...this.state, inSchedule: !this.windows || inSchedule(this.windows, new Date()) });
  }

  private apply(): void {
    const next = this.decide();
    const before = this.current;
    if (before && before.accepting === next.accepting && before.reason === next.reason) return;
    this.current = next;
    const handOff = handsOff(before, next, this.o.handOffAlways);
    if (before || !next.accepting)
      this.o.logger.info({ ...next, handOff }, next.accepting ? "taking jobs" : handOff ? "yielding to the owner" : "not taking new jobs");
    this.o.apply(next.accepting, next.reason, handOff);
  }
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
