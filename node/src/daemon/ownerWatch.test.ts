/** Owner-first decisions over fake samples: when the owner is busy, on battery, and when the node comes back. */
import { describe, expect, it } from "vitest";
import { type CpuSample, DEFAULT_OWNER_POLICY, OwnerWatch, othersDemand } from "./ownerWatch.js";

/** A machine of 4 CPUs at 100 ticks/s, sampled every 250 ms: each step adds 100 ticks of CPU time. */
function machine() {
  let s: CpuSample = { at: 0, busy: 0, total: 0, own: 0 };
  return {
    /** one 250 ms step with these shares of the machine busy: others' programs, and the node's own */
    step(others: number, own = 0): CpuSample {
      s = { at: s.at + 250, busy: s.busy + 100 * (others + own), total: s.total + 100, own: s.own + 100 * own };
      return s;
    },
  };
}

/** Feeds `steps` steps of the same load; returns the verdict after each. */
function run(watch: OwnerWatch, m: ReturnType<typeof machine>, steps: number, others: number, own = 0, battery = false) {
  return Array.from({ length: steps }, () => watch.observe(m.step(others, own), battery));
}

describe("othersDemand", () => {
  it("is the machine's busy time less the node's own, as a share of its CPU time", () => {
    const a = { at: 0, busy: 100, total: 1000, own: 50 };
    expect(othersDemand(a, { at: 1000, busy: 500, total: 1400, own: 250 })).toBe(0.5);
    // the node alone keeps the machine busy: nobody else is
    expect(othersDemand(a, { at: 1000, busy: 500, total: 1400, own: 450 })).toBe(0);
    expect(othersDemand(a, a)).toBe(0);
  });
});

describe("OwnerWatch", () => {
  it("yields once others keep half the machine busy over a whole window, not before", () => {
    const w = new OwnerWatch();
    const m = machine();
    expect(run(w, m, 8, 0.1)).toEqual(Array(8).fill(undefined));
    // the window (1 s) must fill with demand before its average reaches the threshold
    const verdicts = run(w, m, 4, 0.6);
    expect(verdicts.slice(0, 3)).toEqual([undefined, undefined, undefined]);
    expect(verdicts[3]).toBe("owner_busy");
  });

  it("does not count the node's own processes: its engine may keep every CPU busy", () => {
    const w = new OwnerWatch();
    const m = machine();
    expect(run(w, m, 20, 0.05, 0.95)).toEqual(Array(20).fill(undefined));
  });

  it("ignores a short burst that does not raise a window's average to the threshold", () => {
    const w = new OwnerWatch();
    const m = machine();
    run(w, m, 4, 0);
    expect([...run(w, m, 1, 1), ...run(w, m, 8, 0)]).toEqual(Array(9).fill(undefined));
  });

  it("comes back after a quiet period with neither condition, counted from the last time one held", () => {
    const w = new OwnerWatch({ ...DEFAULT_OWNER_POLICY, quietMs: 2_000 });
    const m = machine();
    run(w, m, 4, 0);
    expect(run(w, m, 8, 0.9).at(-1)).toBe("owner_busy");
    // quiet: the window's average falls under the threshold within 2 steps, then 2 s (8 steps) must pass
    const after = run(w, m, 12, 0);
    const back = after.indexOf(undefined);
    expect(back).toBeGreaterThanOrEqual(8);
    expect(back).toBeLessThanOrEqual(10);
    expect(after.slice(back)).toEqual(Array(after.length - back).fill(undefined));
    // busy again (a window's worth) during the quiet period: the quiet period starts over
    expect(run(w, m, 8, 0.9).at(-1)).toBe("owner_busy");
    const quiet = [...run(w, m, 5, 0), ...run(w, m, 4, 0.9), ...run(w, m, 6, 0)];
    expect(quiet.every((v) => v === "owner_busy")).toBe(true);
  });

  it("yields at once on battery, and comes back a quiet period after mains returns", () => {
    const w = new OwnerWatch({ ...DEFAULT_OWNER_POLICY, quietMs: 1_000 });
    const m = machine();
    expect(run(w, m, 1, 0, 0, true)).toEqual(["on_battery"]);
    expect(run(w, m, 4, 0, 0, true).at(-1)).toBe("on_battery");
    expect(run(w, m, 4, 0)).toEqual(["on_battery", "on_battery", "on_battery", undefined]);
  });

  it("honours its policy: a lower threshold and a shorter window", () => {
    const w = new OwnerWatch({ ...DEFAULT_OWNER_POLICY, threshold: 0.2, windowMs: 500 });
    const m = machine();
    run(w, m, 4, 0);
    expect(run(w, m, 2, 0.25)).toEqual([undefined, "owner_busy"]);
  });
});
