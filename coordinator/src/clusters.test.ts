/** The cluster rules: who may form a cluster, and which splits (and so payouts) a head may announce. */

import { type ClusterLayers, type CoordinatorFrame, clusterLayersMessage } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { pino } from "pino";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import {
  type ClusterNode,
  Clusters,
  checkPlan,
  checkReport,
  decideForm,
  type Formation,
  judgePlan,
  type LayerReport,
  MAX_SESSION_MS,
} from "./clusters.js";
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
    head.cluster = [{ ...member("w1", 0, 30, 10_000), tensorBytes: 1 }];
    other.cluster = [{ ...member("w2", 0, 30, 10_000), tensorBytes: 1 }];
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

describe("checkReport", () => {
  it("keeps a worker's report only for its head's current, live formation that names it", () => {
    const r = { sessionId: "s-1", head: "H" as `0x${string}` };
    const head = { ...formation, head: "h" };
    expect(checkReport({ id: "w1", role: "worker" }, r, head, NOW)).toBeUndefined();
    expect(checkReport({ id: "s", role: "solo" }, r, head, NOW)).toMatch(/only a cluster worker/);
    expect(checkReport({ id: "w1", role: "worker" }, r, undefined, NOW)).toMatch(/not the current formation/);
    expect(checkReport({ id: "w1", role: "worker" }, { ...r, sessionId: "s-0" }, head, NOW)).toMatch(/not the current formation/);
    expect(checkReport({ id: "w1", role: "worker" }, { ...r, head: "0xother" }, head, NOW)).toMatch(/not the current formation/);
    expect(checkReport({ id: "w3", role: "worker" }, r, head, NOW)).toMatch(/not a member/);
    expect(checkReport({ id: "w1", role: "worker" }, r, head, head.expiresAt)).toMatch(/expired/);
  });
});

describe("judgePlan", () => {
  const plan = [member("W1", 0, 20, 6667), member("w2", 20, 10, 3333)];
  const seen = (firstLayer: number, layerCount: number, contiguous = true): LayerReport => ({
    firstLayer,
    layerCount,
    contiguous,
    tensorBytes: layerCount * 1000,
  });

  it("confirms a split when every member's own report names its layers, and waits for those not yet in", () => {
    expect(judgePlan(plan, new Map([["w1", seen(0, 20)]]))).toEqual({ state: "waiting", missing: ["w2"] });
    expect(
      judgePlan(
        plan,
        new Map([
          ["w2", seen(20, 10)],
          ["w1", seen(0, 20)],
        ]),
      ),
    ).toEqual({
      state: "confirmed",
      members: [
        { ...member("w1", 0, 20, 6667), tensorBytes: 20_000 },
        { ...member("w2", 20, 10, 3333), tensorBytes: 10_000 },
      ],
    });
  });

  it("refuses a split that a member's own report contradicts, naming the member and both ranges", () => {
    // the head inflates w1 (its own puppet, say) at w2's expense: w2 saw layers 15-29 placed on it
    expect(judgePlan(plan, new Map([["w2", seen(15, 15)]]))).toEqual({
      state: "refused",
      member: "w2",
      claimed: "20-29",
      observed: "15-29",
      reason: "w2 holds layers 15-29 by its own report, not 20-29",
    });
    // layers with gaps match no range
    expect(judgePlan(plan, new Map([["w1", seen(0, 20, false)]]))).toMatchObject({ state: "refused", observed: "0-19 with gaps" });
    // a member of the formation that the split leaves out but that holds layers works unpaid
    expect(
      judgePlan(
        [member("w1", 0, 30, 10_000)],
        new Map([
          ["w1", seen(0, 30)],
          ["w2", seen(20, 10)],
        ]),
      ),
    ).toMatchObject({ state: "refused", member: "w2", claimed: "none" });
  });
});

describe("Clusters: splits held against the members' own reports", () => {
  const key = () => privateKeyToAccount(generatePrivateKey());

  /** A coordinator's cluster state with a head and two workers connected, the cluster formed. */
  async function formed(confirmWaitMs?: number) {
    const fleet = new Fleet();
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: "info" }, { write: (line: string) => lines.push(JSON.parse(line)) });
    const frames = new Map<string, CoordinatorFrame[]>();
    const unit = (account: PrivateKeyAccount, role: ClusterNode["role"]) => {
      const id = account.address.toLowerCase();
      frames.set(id, []);
      const n = new ConnectedNode({
        id,
        engine: "e",
        models: new Map(),
        slots: 1,
        accepting: true,
        role,
        tunnel: role === "worker" ? { host: "10.0.0.2", port: 7000, tls: true, speed: 1 } : undefined,
        send: (f) => frames.get(id)?.push(f),
        disconnect: () => {},
      });
      fleet.add(n);
      return Object.assign(n, { account });
    };
    const head = unit(key(), "head");
    const workers = [unit(key(), "worker"), unit(key(), "worker")] as const;
    const clusters = new Clusters(fleet, confirmWaitMs);
    const form = async (sessionId: string) => {
      const done = clusters.form(head, { sessionId, members: workers.map((w) => w.id), expiresAt: Date.now() + 60_000 }, log);
      for (const w of workers) clusters.ready(sessionId, w.id);
      await done;
    };
    await form("session-1");
    /** a worker's signed report, as worker.ts sends it */
    const report = async (
      w: (typeof workers)[number],
      firstLayer: number,
      layerCount: number,
      o: { sessionId?: string; by?: PrivateKeyAccount } = {},
    ) => {
      const fields = {
        sessionId: o.sessionId ?? "session-1",
        head: head.id as `0x${string}`,
        firstLayer,
        layerCount,
        contiguous: true,
        tensorBytes: 10 * layerCount,
      };
      const signature = await (o.by ?? w.account).signMessage({ message: clusterLayersMessage({ ...fields, worker: w.id }) });
      const r: ClusterLayers = { type: "cluster.layers", ...fields, signature };
      await clusters.report(w, r, log);
    };
    const plan = [member(workers[0].id, 0, 20, 6667), member(workers[1].id, 20, 10, 3333)];
    const errors = () => frames.get(head.id)?.filter((f) => f.type === "error") ?? [];
    return { clusters, head, workers, report, plan, errors, lines, log, form };
  }

  it("confirms a split once both members' reports agree, whether the split or the reports come first", async () => {
    const c = await formed();
    expect(c.clusters.plan(c.head, c.plan, c.log)).toBeUndefined();
    await c.report(c.workers[0], 0, 20);
    expect(c.head.cluster).toBeUndefined();
    expect(c.head.accepting).toBe(false);
    await c.report(c.workers[1], 20, 10);
    expect(c.head.cluster?.map((m) => [m.nodeId, m.firstLayer, m.layerCount, m.tensorBytes])).toEqual([
      [c.workers[0].id, 0, 20, 200],
      [c.workers[1].id, 20, 10, 100],
    ]);
    expect(c.head.accepting).toBe(true);

    const d = await formed();
    await d.report(d.workers[1], 20, 10);
    await d.report(d.workers[0], 0, 20);
    expect(d.head.cluster).toBeUndefined();
    expect(d.clusters.plan(d.head, d.plan, d.log)).toBeUndefined();
    expect(d.head.cluster).toHaveLength(2);
    expect(d.errors()).toEqual([]);
  });

  it("refuses a split a member's own report contradicts: an error to the head, a warning naming the member", async () => {
    const c = await formed();
    c.clusters.plan(c.head, c.plan, c.log);
    await c.report(c.workers[0], 0, 20);
    // the head inflated worker 0's part: worker 1 saw layers 15-29 placed on it
    await c.report(c.workers[1], 15, 15);
    expect(c.head.cluster).toBeUndefined();
    expect(c.errors()).toEqual([
      { type: "error", message: `cluster split refused: ${c.workers[1].id} holds layers 15-29 by its own report, not 20-29` },
    ]);
    expect(c.lines.find((l) => l.msg === "cluster split refused: a member's own report differs")).toMatchObject({
      member: c.workers[1].id,
      claimed: "20-29",
      observed: "15-29",
    });
    // a confirmed split that a later report contradicts is withdrawn too
    const d = await formed();
    d.clusters.plan(d.head, d.plan, d.log);
    await d.report(d.workers[0], 0, 20);
    await d.report(d.workers[1], 20, 10);
    expect(d.head.accepting).toBe(true);
    await d.report(d.workers[1], 20, 9);
    expect(d.head.cluster).toBeUndefined();
    expect(d.errors()).toHaveLength(1);
  });

  it("keeps no report signed by another key, for another session, or from a formation that was replaced", async () => {
    const c = await formed();
    c.clusters.plan(c.head, c.plan, c.log);
    await c.report(c.workers[0], 0, 20, { by: key() });
    await c.report(c.workers[0], 0, 20, { by: c.workers[1].account });
    await c.report(c.workers[1], 20, 10, { sessionId: "session-0" });
    expect(c.lines.filter((l) => String(l.msg).startsWith("layer report refused"))).toHaveLength(3);
    await c.report(c.workers[1], 20, 10);
    expect(c.head.cluster).toBeUndefined();
    // a new formation discards the reports and the split held before it
    await c.form("session-2");
    await c.report(c.workers[0], 0, 20);
    await c.report(c.workers[0], 0, 20, { sessionId: "session-2" });
    await c.report(c.workers[1], 20, 10, { sessionId: "session-2" });
    expect(c.head.cluster).toBeUndefined();
    expect(c.clusters.plan(c.head, c.plan, c.log)).toBeUndefined();
    expect(c.head.cluster).toHaveLength(2);
    // a new split replaces the confirmed one, and waits for reports that match it
    expect(c.clusters.plan(c.head, [member(c.workers[0].id, 0, 30, 10_000)], c.log)).toBeUndefined();
    expect(c.errors()).toHaveLength(1);
    expect(c.head.cluster).toBeUndefined();
  });

  it("leaves a split without its reports unconfirmed, and says so after a while", async () => {
    const c = await formed(50);
    c.clusters.plan(c.head, c.plan, c.log);
    await c.report(c.workers[0], 0, 20);
    const line = await waitFor("the unconfirmed split logged", () =>
      c.lines.find((l) => l.msg === "cluster split still unconfirmed: members have not reported their layers"),
    );
    expect(line.missing).toEqual([c.workers[1].id]);
    expect(c.head.cluster).toBeUndefined();
  });
});
