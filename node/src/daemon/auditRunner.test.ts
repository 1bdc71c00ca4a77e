import { describe, expect, it } from "vitest";
import { ScorerFailed } from "../engine/scorer.js";
import { claimRefusal, onePassOf } from "./auditRunner.js";

describe("onePassOf (what a one pass decodes)", () => {
  const head = [1, 10, 11];

  it("decodes the prompt and the claimed tokens up to the last position; each position's row is the token before it", () => {
    const pass = onePassOf(head, { claimed: [20, 21, 22, 23, 24], positions: [0, 2, 3] }, 100);
    expect(pass.tokens).toEqual([1, 10, 11, 20, 21, 22]);
    expect(pass.rows).toEqual([2, 4, 5]);
    expect(pass.targets).toEqual([20, 22, 23]);
    expect(pass.positions).toEqual([0, 2, 3]);
  });

  it("stops at the first claimed token outside the vocabulary, which it still scores", () => {
    const pass = onePassOf(head, { claimed: [20, 500, 22, 23], positions: [0, 1, 3] }, 100);
    expect(pass.positions).toEqual([0, 1]);
    expect(pass.tokens).toEqual([1, 10, 11, 20]);
    expect(pass.rows).toEqual([2, 3]);
    expect(pass.targets).toEqual([20, 500]);
  });

  it("has nothing to decode past the prompt when only position 0 is audited", () => {
    expect(onePassOf(head, { claimed: [20, 21], positions: [0] }, 100).tokens).toEqual(head);
    expect(onePassOf(head, { claimed: [20, 21], positions: [] }, 100).positions).toEqual([]);
  });

  it("refuses an empty prompt (no row to score position 0 from): the runner replays instead", () => {
    expect(() => onePassOf([], { claimed: [20], positions: [0] }, 100)).toThrow(ScorerFailed);
  });
});

describe("claimRefusal", () => {
  const claim = { kind: "completion" as const, request: {}, claimed: [1, 2, 3], topK: 5 };
  it("takes ascending distinct positions within the output", () => {
    expect(claimRefusal({ ...claim, positions: [0, 2] })).toBeUndefined();
    expect(claimRefusal({ ...claim, positions: [2, 1] })).toMatch(/ascending/);
    expect(claimRefusal({ ...claim, positions: [3] })).toMatch(/past the claimed output/);
  });
});
