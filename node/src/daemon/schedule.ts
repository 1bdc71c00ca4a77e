/**
 * Contribution schedules: when a machine's owner lets it serve. A schedule is one
 * or more windows separated by ";", each `<days> <HH:MM>-<HH:MM>` in local time,
 * e.g. `weekdays 17:00-08:00; weekends 00:00-24:00`. Days: `daily`, `weekdays`,
 * `weekends`, or a comma list of `mon`..`sun` (ranges like `mon-fri` too). A window
 * that ends before it starts runs overnight and belongs to the day it starts on.
 */
import { SharedLLMError } from "../errors.js";

const DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"] as const;

export interface Window {
  days: ReadonlySet<number>;
  /** minutes after midnight */
  start: number;
  end: number;
}

export class ScheduleError extends SharedLLMError {
  override name = "ScheduleError";
  constructor(message: string) {
    super("config", message);
  }
}

function parseDays(spec: string): Set<number> {
  const named: Record<string, number[]> = { daily: [0, 1, 2, 3, 4, 5, 6], weekdays: [1, 2, 3, 4, 5], weekends: [0, 6] };
  const days = new Set<number>();
  for (const part of spec.toLowerCase().split(",")) {
    if (named[part]) {
      for (const d of named[part]) days.add(d);
      continue;
    }
    const [a, b] = part.split("-").map((p) => DAY_NAMES.indexOf(p as (typeof DAY_NAMES)[number]));
    if (a === undefined || a < 0 || (b !== undefined && b < 0))
      throw new ScheduleError(`unknown day "${part}": use mon..sun, weekdays, weekends or daily`);
    for (let d = a; ; d = (d + 1) % 7) {
      days.add(d);
      if (b === undefined || d === b) break;
    }
  }
  return days;
}

function parseTime(t: string): number {
  const m = /^(\d{1,2}):(\d{2})$/.exec(t);
  const minutes = m ? Number(m[1]) * 60 + Number(m[2]) : Number.NaN;
  if (!m || Number(m[2]) > 59 || minutes > 24 * 60) throw new ScheduleError(`bad time "${t}": use HH:MM, 00:00 to 24:00`);
  return minutes;
}

export function parseSchedule(spec: string): Window[] {
  return spec
    .split(";")
    .map((w) => w.trim())
    .filter(Boolean)
    .map((w) => {
      const m = /^(\S+)\s+(\S+)-(\S+)$/.exec(w);
      if (!m) throw new ScheduleError(`bad window "${w}": write e.g. "weekdays 17:00-08:00"`);
      return { days: parseDays(m[1] as string), start: parseTime(m[2] as string), end: parseTime(m[3] as string) };
    });
}

/** Whether the local time `at` falls inside any window. */
export function inSchedule(windows: readonly Window[], at: Date): boolean {
  const day = at.getDay();
  const minute = at.getHours() * 60 + at.getMinutes();
  const yesterday = (day + 6) % 7;
  return windows.some((w) => {
    if (w.start <= w.end) return w.days.has(day) && minute >= w.start && minute < w.end;
    // overnight: the evening part on its own day, the morning part on the next
    return (w.days.has(day) && minute >= w.start) || (w.days.has(yesterday) && minute < w.end);
  });
}
