import { describe, expect, it } from "vitest";
import { pickPositions } from "./audits.js";

describe("pickPositions", () => {
  it("draws distinct positions of the part, ascending, at most the count asked and the part's length", () => {
    for (let i = 0; i < 200; i++) {
      const p = pickPositions(10, 30, 8);
      expect(p).toHaveLength(8);
      expect(new Set(p).size).toBe(8);
      expect([...p].sort((a, b) => a - b)).toEqual(p);
      for (const x of p) expect(x >= 10 && x < 30).toBe(true);
    }
    expect(pickPositions(3, 6, 8)).toEqual([3, 4, 5]);
    expect(pickPositions(5, 5, 8)).toEqual([]);
  });

  it("does not favour the start of the part (a node cannot cheat only late)", () => {
    let late = 0;
    for (let i = 0; i < 500; i++) late += pickPositions(0, 100, 1).filter((x) => x >= 50).length;
    expect(late).toBeGreaterThan(200);
    expect(late).toBeLessThan(300);
  });
});
