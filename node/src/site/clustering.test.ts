import { describe, expect, it } from "vitest";
import { decideRole, type Member, sameDecision } from "./clustering.js";

const GiB = 2 ** 30;
const m = (id: string, address: string, memoryGiB: number, rttMs?: number): Member => ({
  nodeId: id,
  address,
  memoryBytes: memoryGiB * GiB,
  rttMs,
});

describe("decideRole", () => {
  it("is solo without near peers (a slow link does not count)", () => {
    expect(decideRole(m("a", "10.0.0.2", 8), [m("b", "10.0.0.3", 16, 10.8)])).toEqual({ role: "solo", head: "a", workers: [] });
    expect(decideRole(m("a", "10.0.0.2", 8), [m("b", "10.0.0.3", 16)])).toMatchObject({ role: "solo" });
  });

  it("makes the member with the most memory the head, ties to the lowest address", () => {
    const peers = [m("b", "10.0.0.3", 16, 0.3), m("c", "10.0.0.4", 8, 0.4), m("far", "10.0.0.9", 64, 10)];
    expect(decideRole(m("a", "10.0.0.2", 8), peers)).toEqual({ role: "worker", head: "b", workers: ["a", "c"] });
    expect(decideRole(m("b", "10.0.0.3", 16), [m("a", "10.0.0.2", 8, 0.3), m("c", "10.0.0.4", 8, 0.3)])).toEqual({
      role: "head",
      head: "b",
      workers: ["a", "c"],
    });
    // equal memory: 10.0.0.10 is higher than 10.0.0.9 (numeric, not string order)
    expect(decideRole(m("x", "10.0.0.10", 8), [m("y", "10.0.0.9", 8, 0.2)])).toMatchObject({ role: "worker", head: "y" });
  });

  it("keeps a member whose round trip wobbles above the threshold, but does not take in a new one", () => {
    const peers = [m("b", "10.0.0.3", 8, 3.1)];
    expect(decideRole(m("a", "10.0.0.2", 8), peers)).toMatchObject({ role: "solo" });
    const current = { role: "head" as const, head: "a", workers: ["b"] };
    expect(decideRole(m("a", "10.0.0.2", 8), peers, 2, current)).toEqual(current);
    // a far link stays far
    expect(decideRole(m("a", "10.0.0.2", 8), [m("b", "10.0.0.3", 8, 10.8)], 2, current)).toMatchObject({ role: "solo" });
  });

  it("keeps a worker's daemon when only the other workers change, and re-forms a head", () => {
    const worker = { role: "worker" as const, head: "a", workers: ["b", "c"] };
    expect(sameDecision(worker, { ...worker, workers: ["b"] })).toBe(true);
    expect(sameDecision(worker, { ...worker, head: "c" })).toBe(false);
    const head = { role: "head" as const, head: "a", workers: ["b", "c"] };
    expect(sameDecision(head, { ...head, workers: ["b"] })).toBe(false);
    expect(sameDecision(undefined, head)).toBe(false);
  });
});
