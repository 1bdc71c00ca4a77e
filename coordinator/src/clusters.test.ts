/** The cluster rules: who may form a cluster, and which splits (and so payouts) a head may announce. */

import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { type ClusterNode, Clusters, checkPlan, decideForm, type Formation, MAX_SESSION_MS } from "./clusters.js";
import { Fleet } from "./fleet.js";
import { ConnectedNode, type JobSink } from "./units.js";

const NOW = 1_000_000;
const node = (id: string, role: ClusterNode["role"], tunnel = role === "worker"): ClusterNode => ({
  id,
  role,
  tunnel: tunnel ? {} : undefined,
});
const fleet = new Map([node("h", "head"), node("w1", "worker"), node("w2", "worker"), node("s", "solo")].map((n) => [n.id, n]));
const lookup = (id: string) => fleet.get(id);
const formation: Formation = { sessionId: "s-1", head: "h", members: new Set(["w1", "w2"]), expiresAt: NOW + 60_000 };
const member = (nodeId: string, firstLayer: number, layerCount: number, shareBps: number) => ({ nodeId, firstLayer, layerCount, shareBps });

describe("decideForm", () => {
  it("lets only a head form a cluster, of connected workers other than itself, for at most a day", () => {
    expect(decideForm(node("s", "solo"), { members: ["w1"], expiresAt: NOW + 1 }, lookup, NOW)).toMatchObject({ ok: false });
    expect(decideForm(node("w2", "worker"), { members: ["w1"], expiresAt: NOW + 1 }, lookup, NOW)).toMatchObject({ ok: false });
    expect(decideForm(node("h", "head"), { members: ["w1"], expiresAt: NOW }, lookup, NOW)).toMatchObject({ ok: false });
    const d = decideForm(node("h", "head"), { members: ["W1", "w1", "s", "h", "gone"], expiresAt: NOW + 10 * MAX_SESSION_MS }, lookup, NOW);
    expect(d).toEqual({
      ok: true,
      expiresAt: NOW + MAX_SESSION_MS,
      invite: ["w1"],
      missing: [
        { nodeId: "s", reason: "not a worker" },
        { nodeId: "h", reason: "a head is not its own worker" },
        { nodeId: "gone", reason: "not connected" },
      ],
    });
  });
});

describe("decideForm and the owner's say", () => {
  it("leaves out a worker that takes no work now (paused, outside its schedule, yielding), saying why", () => {
    const paused = { ...node("w3", "worker"), available: false, unavailableReason: "paused" };
    const lookupAll = (id: string) => (id === "w3" ? paused : lookup(id));
    expect(decideForm(node("h", "head"), { members: ["w1", "w3"], expiresAt: NOW + 1 }, lookupAll, NOW)).toEqual({
      ok: true,
      expiresAt: NOW + 1,
      invite: ["w1"],
      missing: [{ nodeId: "w3", reason: "not taking work (paused)" }],
    });
  });
});

describe("Clusters.withdraw", () => {
  it("takes the split from each head that runs on a worker that yielded, and hands the head's jobs off", () => {
    const fleet = new Fleet();
    const sent: unknown[] = [];
    const unit = (id: string, role: ClusterNode["role"]) =>
      new ConnectedNode({
        id,
        engine: "e",
        models: new Map(),
        slots: 1,
        accepting: true,
        role,
        send: (f) => sent.push(f),
        disconnect: () => {},
      });
    const head = unit("h", "head");
    const other = unit("h2", "head");
    for (const n of [head, other, unit("w1", "worker"), unit("w2", "worker")]) fleet.add(n);
    head.cluster = [member("w1", 0, 30, 10_000)];
    other.cluster = [member("w2", 0, 30, 10_000)];
    const errors: unknown[] = [];
    const sink: JobSink = { chunk: () => {}, end: () => {}, error: (e) => errors.push(e) };
    head.dispatch({ type: "job.start", jobId: "j1", kind: "chat", stream: true, includeUsage: false, request: {} }, sink);
    new Clusters(fleet).withdraw("w1", "owner_busy", pino({ level: "silent" }));
    expect(head.cluster).toBeUndefined();
    expect(head.accepting).toBe(false);
    expect(other.cluster).toHaveLength(1);
    expect(sent.at(-1)).toEqual({ type: "job.cancel", jobId: "j1" });
    expect(errors).toEqual([{ message: "the node's owner needs the machine (owner_busy)", retryable: true, cause: "owner" }]);
    expect(head.active).toBe(0);
  });
});

describe("checkPlan", () => {
  it("believes a split of the formation's members whose shares add up to 10000", () => {
    expect(checkPlan("h", formation, [member("w1", 0, 20, 6667), member("w2", 20, 10, 3333)], NOW)).toBeUndefined();
  });

  it("refuses splits from a node without a formation, over strangers, duplicates, or shares not adding up to 10000", () => {
    const split = [member("w1", 0, 10, 5000), member("w2", 10, 10, 5000)];
    expect(checkPlan("s", undefined, split, NOW)).toMatch(/formed no cluster/);
    expect(checkPlan("s", formation, split, NOW)).toMatch(/formed no cluster/);
    expect(checkPlan("h", formation, split, formation.expiresAt)).toMatch(/expired/);
    expect(checkPlan("h", formation, [], NOW)).toMatch(/at least one/);
    expect(checkPlan("h", formation, [member("w1", 0, 10, 10_000), member("s", 10, 10, 10_000)], NOW)).toMatch(/not a member/);
    expect(checkPlan("h", formation, [member("w1", 0, 10, 10_000), member("W1", 10, 10, 10_000)], NOW)).toMatch(/twice/);
    expect(checkPlan("h", formation, [member("w1", 0, 10, 10_000), member("w2", 10, 10, 10_000)], NOW)).toMatch(/20000/);
    expect(checkPlan("h", formation, [member("w1", 0, 10, 4000), member("w2", 10, 10, 5000)], NOW)).toMatch(/9000/);
    expect(checkPlan("h", formation, [member("w1", 0, 10, 5000), member("w2", 5, 10, 5000)], NOW)).toMatch(/overlap/);
    // a member that serves half the layers is paid half, whatever order the head lists them in
    expect(checkPlan("h", formation, [member("w1", 10, 10, 1000), member("w2", 0, 10, 9000)], NOW)).toMatch(
      /w2's share \(9000 bps\) is not its part of the layers \(5000 bps\)/,
    );
    // the head runs only the output head: it cannot name itself to be paid
    expect(checkPlan("h", formation, [member("h", 0, 10, 5000), member("w1", 10, 10, 5000)], NOW)).toMatch(/serves no layers/);
  });
});
