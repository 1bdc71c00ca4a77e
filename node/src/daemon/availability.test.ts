/** The owner's say combined into one availability, and when stopping hands the jobs in flight off. */
import type { AvailabilityReason } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { type AvailabilityDecision, decideAvailability, handsOff, OwnerControls } from "./availability.js";
import type { CpuSample } from "./ownerWatch.js";

const state = { paused: false, draining: false, inSchedule: true, need: undefined };
const stopped = (reason: AvailabilityReason): AvailabilityDecision => ({ accepting: false, reason });
const taking: AvailabilityDecision = { accepting: true, reason: "resumed" };

describe("decideAvailability", () => {
  it("takes jobs when nothing stops it; else the first that holds of draining, paused, owner-first, schedule", () => {
    expect(decideAvailability(state)).toEqual(taking);
    expect(decideAvailability({ ...state, inSchedule: false })).toEqual(stopped("schedule"));
    expect(decideAvailability({ ...state, inSchedule: false, need: "owner_busy" })).toEqual(stopped("owner_busy"));
    expect(decideAvailability({ ...state, need: "on_battery", paused: true })).toEqual(stopped("paused"));
    expect(decideAvailability({ ...state, paused: true, draining: true })).toEqual(stopped("draining"));
  });
});

describe("handsOff", () => {
  it("hands off when the node yields to its owner (paused, owner-first), not when it drains or leaves its schedule", () => {
    expect(handsOff(taking, stopped("paused"))).toBe(true);
    expect(handsOff(taking, stopped("owner_busy"))).toBe(true);
    expect(handsOff(taking, stopped("on_battery"))).toBe(true);
    expect(handsOff(taking, stopped("schedule"))).toBe(false);
    expect(handsOff(taking, stopped("draining"))).toBe(false);
    expect(handsOff(stopped("paused"), taking)).toBe(false);
    // jobs still finishing outside the schedule are handed off when the owner needs the machine
    expect(handsOff(stopped("schedule"), stopped("owner_busy"))).toBe(true);
    // already handed off
    expect(handsOff(stopped("paused"), stopped("owner_busy"))).toBe(false);
    expect(handsOff(undefined, stopped("paused"))).toBe(true);
  });

  it("for a worker (always), hands off whenever it stops taking work, once", () => {
    expect(handsOff(taking, stopped("schedule"), true)).toBe(true);
    expect(handsOff(taking, stopped("draining"), true)).toBe(true);
    expect(handsOff(stopped("schedule"), stopped("paused"), true)).toBe(false);
  });
});

describe("OwnerControls", () => {
  it("tells each change: yields while others keep the machine busy, back after the quiet period; pause and resume", async () => {
    const told: [boolean, AvailabilityReason, boolean][] = [];
    // a fake machine: 100 ticks per sample, `others` of them busy for programs not the node's
    let others = 0;
    let s: CpuSample = { at: 0, busy: 0, total: 0, own: 0 };
    const controls = new OwnerControls({
      apply: (...a) => told.push(a),
      ownerFirst: { threshold: 0.5, windowMs: 40, sampleMs: 10, quietMs: 150 },
      sample: () => {
        s = { at: performance.now(), busy: s.busy + others, total: s.total + 100, own: 0 };
        return s;
      },
      battery: async () => false,
      logger: pino({ level: "silent" }),
    });
    controls.start();
    try {
      expect(told).toEqual([[true, "resumed", false]]);
      others = 90;
      await waitFor("owner-first to yield", () => told.length === 2);
      expect(told[1]).toEqual([false, "owner_busy", true]);
      others = 0;
      const quietFrom = performance.now();
      await waitFor("the node back after the quiet period", () => told.length === 3);
      expect(told[2]).toEqual([true, "resumed", false]);
      expect(performance.now() - quietFrom).toBeGreaterThanOrEqual(150);
      controls.pause();
      controls.pause();
      controls.resume();
      expect(told.slice(3)).toEqual([
        [false, "paused", true],
        [true, "resumed", false],
      ]);
    } finally {
      controls.stop();
    }
  });

  it("starts paused or outside its schedule without taking jobs", () => {
    const told: unknown[] = [];
    const day = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"][(new Date().getDay() + 3) % 7];
    const outside = new OwnerControls({ apply: (...a) => told.push(a), schedule: `${day} 00:00-00:01`, logger: pino({ level: "silent" }) });
    outside.start();
    outside.stop();
    expect(outside.availability).toEqual(stopped("schedule"));
    const paused = new OwnerControls({ apply: (...a) => told.push(a), paused: true, logger: pino({ level: "silent" }) });
    paused.start();
    paused.stop();
    expect(told).toEqual([
      [false, "schedule", false],
      [false, "paused", true],
    ]);
  });
});
