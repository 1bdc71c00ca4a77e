import { describe, expect, it } from "vitest";
import { FrameBudget, WRITTEN_FRAMES_PER_MINUTE } from "./frameBudget.js";

describe("FrameBudget", () => {
  it("takes WRITTEN_FRAMES_PER_MINUTE frames a minute, then none until the next minute", () => {
    const b = new FrameBudget();
    for (let i = 0; i < WRITTEN_FRAMES_PER_MINUTE; i++) expect(b.take(1_000 + i)).toBe(true);
    expect(b.take(30_000)).toBe(false);
    expect(b.take(60_999)).toBe(false);
    expect(b.take(61_000)).toBe(true);
  });
});
