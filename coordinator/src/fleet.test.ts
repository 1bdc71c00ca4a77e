import type { ServedModel } from "@sharedllm/protocol";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Fleet, type NodeView, pickLoader, pickNode, QUEUE_FACTOR, silentNodes, sweepSchedule } from "./fleet.js";
import { RemoteNode } from "./replicas/remoteNode.js";
import type { RemoteState } from "./replicas/wire.js";
import { ConnectedNode } from "./units.js";

const model: ServedModel = { id: "m", sha256: "0".repeat(64), contextSize: 4096 };
const node = (id: string, active: number, slots = 2, extra: Partial<NodeView> = {}): NodeView => ({
  id,
  models: new Map([["m", model]]),
  slots,
  active,
  coolingUntil: 0,
  accepting: true,
  tokensPerSecond: 0,
  order: id.charCodeAt(0),
  ...extra,
});

describe("pickNode", () => {
  it("picks the least loaded node per slot", () => {
    expect(pickNode([node("a", 2), node("b", 1), node("c", 3)], "m", 0)?.id).toBe("b");
    expect(pickNode([node("a", 2, 2), node("b", 3, 4)], "m", 0)?.id).toBe("b");
  });

  it("breaks ties by measured speed, then more slots, then connection order", () => {
    expect(pickNode([node("a", 0, 2, { tokensPerSecond: 10 }), node("b", 0, 2, { tokensPerSecond: 30 })], "m", 0)?.id).toBe("b");
    expect(pickNode([node("a", 1, 2, { tokensPerSecond: 10 }), node("b", 2, 2, { tokensPerSecond: 30 })], "m", 0)?.id).toBe("a");
    expect(pickNode([node("b", 0), node("a", 0)], "m", 0)?.id).toBe("a");
    expect(pickNode([node("a", 0, 1), node("b", 0, 4)], "m", 0)?.id).toBe("b");
  });

  it("skips nodes without the model, not accepting jobs, excluded or with a full queue", () => {
    const other = { ...node("x", 0), models: new Map() };
    const full = node("f", 2 * QUEUE_FACTOR);
    const paused = node("p", 0, 2, { accepting: false });
    expect(pickNode([other, full, paused], "m", 0)).toBeUndefined();
    expect(pickNode([node("a", 0), node("b", 1)], "m", 0, new Set(["a"]))?.id).toBe("b");
  });

  it("prefers nodes with the model loaded, and applies the policy", () => {
    const restarting = node("a", 0, 2, { notLoaded: new Set(["m"]) });
    expect(pickNode([restarting, node("b", 3)], "m", 0)?.id).toBe("b");
    expect(pickNode([restarting], "m", 0)?.id).toBe("a");
    expect(pickNode([node("a", 0), node("b", 3)], "m", 0, new Set(), (n) => n.id !== "a")?.id).toBe("b");
  });

  it("uses a node cooling off after a failure only when no healthy node can take the job", () => {
    const cooling = node("c", 0, 2, { coolingUntil: 1_000 });
    expect(pickNode([cooling, node("busy", 2 * QUEUE_FACTOR - 1)], "m", 500)?.id).toBe("busy");
    expect(pickNode([cooling], "m", 500)?.id).toBe("c");
    expect(pickNode([cooling, node("b", 3)], "m", 1_001)?.id).toBe("c");
  });
});

describe("silent nodes", () => {
  it("are taken off within the missed heartbeat periods of their last heartbeat, whatever the sweep's phase", () => {
    const intervalMs = 5_000;
    const { everyMs, silentMs } = sweepSchedule(intervalMs, 3);
    for (let phase = 0; phase < everyMs; phase += 37) {
      for (let lastSeenAt = 0; lastSeenAt < 2 * intervalMs; lastSeenAt += 53) {
        // the sweeps at phase, phase + everyMs, ...: the first that finds the node silent takes it off
        let at = phase;
        while (silentNodes([{ id: "n", lastSeenAt }], at, silentMs).length === 0) at += everyMs;
        expect(at - lastSeenAt).toBeLessThanOrEqual(3 * intervalMs);
        // and a node two heartbeats late is still on
        expect(at - lastSeenAt).toBeGreaterThan(2 * intervalMs);
      }
    }
  });
});

describe("pickLoader", () => {
  const wanted = { id: "big", sha256: "1".repeat(64), source: "hf:o/r/big.gguf", sizeBytes: 1_000 };
  const withMemory = (id: string, free: number, extra: Partial<NodeView> & { loading?: string; role?: string } = {}) => ({
    ...node(id, 0),
    heartbeat: { type: "heartbeat" as const, load: 0, freeMemoryBytes: free, activeJobs: 0, loadedModels: ["m"], tokensPerSecond: 0 },
    ...extra,
  });

  it("asks the idle node with the most free memory, if it has room for twice the model", () => {
    expect(pickLoader([withMemory("a", 3_000), withMemory("b", 5_000)], wanted)?.id).toBe("b");
    expect(pickLoader([withMemory("a", 1_500)], wanted)).toBeUndefined();
  });

  it("never asks a busy, paused or already loading node", () => {
    expect(pickLoader([withMemory("busy", 9_000, { active: 1 })], wanted)).toBeUndefined();
    expect(pickLoader([withMemory("paused", 9_000, { accepting: false })], wanted)).toBeUndefined();
    expect(pickLoader([withMemory("loading", 9_000, { loading: "other" })], wanted)).toBeUndefined();
  });

  it("asks only solo nodes: a worker serves no models, and a head's split pays for its own model only", () => {
    expect(pickLoader([withMemory("worker", 9_000, { role: "worker" }), withMemory("solo", 3_000)], wanted)?.id).toBe("solo");
    expect(pickLoader([withMemory("head", 9_000, { role: "head" })], wanted)).toBeUndefined();
  });
});

describe("Fleet bookkeeping", () => {
  const connected = (id: string, models: string[]) =>
    new ConnectedNode({
      id,
      models: new Map(models.map((m) => [m, { ...model, id: m }])),
      slots: 2,
      accepting: true,
      engine: "e",
      role: "solo",
      send: () => {},
      disconnect: () => {},
    });

  it("knows which models are served as nodes come, change their models and go", () => {
    const fleet = new Fleet();
    const a = connected("a", ["m"]);
    fleet.add(a);
    fleet.add(connected("b", ["m", "x"]));
    expect([fleet.servesModel("m"), fleet.servesModel("x"), fleet.servesModel("y")]).toEqual([true, true, false]);
    fleet.remove("b", "test");
    expect([fleet.servesModel("m"), fleet.servesModel("x")]).toEqual([true, false]);
    fleet.setModels(a, new Map([["y", { ...model, id: "y" }]]));
    expect([fleet.servesModel("m"), fleet.servesModel("y")]).toEqual([false, true]);
    // a node that reconnects replaces its old session without counting twice
    fleet.add(connected("a", ["y"]));
    fleet.remove("a", "test");
    expect(fleet.servesModel("y")).toBe(false);
  });

  it("schedules over another replica's nodes as their models change, and drops them; this replica's own node wins its id", () => {
    const fleet = new Fleet();
    const link = { dispatch: () => {}, cancel: () => {}, forget: () => {} };
    const state = (id: string, models: string[]): RemoteState => ({
      id,
      models: models.map((m) => ({ ...model, id: m })),
      slots: 2,
      active: 0,
      accepting: true,
      coolingUntil: 0,
      tokensPerSecond: 0,
      suspicion: 0,
      incarnation: 0,
      payees: { members: [] },
      network: {} as RemoteState["network"],
    });
    const id = `0x${"1".repeat(40)}`;
    const remote = new RemoteNode(state(id, ["m"]), "replica-b", link);
    fleet.putRemote(remote);
    expect(fleet.pick("m")).toBe(remote);
    fleet.setRemoteModels(remote, new Map([["x", { ...model, id: "x" }]]));
    expect([fleet.pick("m"), fleet.pick("x")]).toEqual([undefined, remote]);
    // its load, as its replica tells it, ranks it against this replica's node
    const local = connected(`0x${"2".repeat(40)}`, ["x"]);
    fleet.add(local);
    remote.update({ ...state(id, ["x"]), active: 1 });
    expect(fleet.pick("x")).toBe(local);
    // all else equal, this replica's own node goes first, though the other replica's was known before it
    remote.update(state(id, ["x"]));
    expect(fleet.pick("x")).toBe(local);
    local.dispatch(
      { type: "job.start", jobId: "j", kind: "chat", stream: false, includeUsage: false, request: {} },
      {
        chunk: () => {},
        end: () => {},
        error: () => {},
      },
    );
    expect(fleet.pick("x")).toBe(remote);
    expect(fleet.dropRemote(id)).toBe(remote);
    expect(fleet.pick("x")).toBe(local);
    expect(fleet.servesModel("m")).toBe(false);
    // a node that connects here is this replica's, whatever another replica said of it
    fleet.putRemote(new RemoteNode(state(local.id, ["x"]), "replica-b", link));
    expect(fleet.remoteNode(local.id)).toBeUndefined();
  });

  it("tells its watchers of every change in who serves what, until they stop watching", () => {
    const fleet = new Fleet();
    const seen: boolean[] = [];
    const stop = fleet.watch(() => seen.push(fleet.servesModel("m")));
    const a = connected("a", []);
    fleet.add(a);
    fleet.setModels(a, new Map([["m", model]]));
    fleet.remove("a", "test");
    stop();
    fleet.add(connected("b", ["m"]));
    expect(seen).toEqual([false, true, false]);
  });
});

describe("Fleet.pick", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** a seeded generator (mulberry32): the same fleets on every run */
  function random(seed: number): () => number {
    let a = seed;
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  it("picks what pickNode picks over random fleets, as their nodes' loads, speeds and standing change", () => {
    vi.useFakeTimers({ now: 1_000_000 });
    const sink = { chunk() {}, end() {}, error() {} };
    const usage = { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 };
    for (let seed = 1; seed <= 20; seed++) {
      const rnd = random(seed);
      const int = (n: number) => Math.floor(rnd() * n);
      const fleet = new Fleet();
      const models = ["m", "x"];
      let nodes = 0;
      let jobs = 0;
      const join = () => {
        const served = models.filter(() => rnd() < 0.7);
        const n = new ConnectedNode({
          id: `n${nodes++}`,
          models: new Map(served.map((m) => [m, { ...model, id: m }])),
          slots: 1 + int(4),
          accepting: rnd() < 0.9,
          engine: "e",
          role: "solo",
          capabilities: { tokensPerSecond: [0, 10, 42][int(3)] as number } as never,
          send: () => {},
          disconnect: () => {},
        });
        n.suspicion = rnd() < 0.1 ? 1 : 0;
        fleet.add(n);
      };
      for (let i = 0; i < 30; i++) join();
      for (let step = 0; step < 400; step++) {
        const all = fleet.list();
        const n = all[int(all.length)] as ConnectedNode;
        const op = int(10);
        if (op < 3) n.dispatch({ jobId: `j${jobs++}` } as never, sink);
        else if (op === 3 && n.jobs.size) n.end([...n.jobs.keys()][0] as string, usage);
        else if (op === 4 && n.jobs.size) n.error([...n.jobs.keys()][0] as string, { message: "engine", retryable: true });
        else if (op === 5) {
          // a heartbeat: speed and loaded models
          n.tokensPerSecond = [10, 42, 42, 50][int(4)] as number;
          n.notLoaded = rnd() < 0.2 ? new Set(["m"]) : undefined;
          n.rankChanged();
        } else if (op === 6) {
          n.suspicion = int(2);
          n.rankChanged();
        } else if (op === 7) n.setAvailability(rnd() < 0.8, "resumed");
        else if (op === 8) vi.advanceTimersByTime(int(1_500));
        else if (rnd() < 0.5) fleet.remove(n.id, "test");
        else join();
        const now = Date.now();
        const skip = `n${int(nodes)}`;
        for (const m of models) {
          expect(fleet.pick(m)?.id).toBe(pickNode(fleet.list(), m, now)?.id);
          const allow = (u: NodeView) => u.id !== skip;
          expect(fleet.pick(m, allow)?.id).toBe(pickNode(fleet.list(), m, now, undefined, allow)?.id);
        }
      }
    }
  });
});

describe("Fleet.until", () => {
  it("resolves with the first value a check gives after a change, or undefined on timeout or abort", async () => {
    const fleet = new Fleet();
    let ready: string | undefined;
    const waiting = fleet.until(() => ready, 10_000, new AbortController().signal);
    ready = "now";
    fleet.notify();
    expect(await waiting).toBe("now");
    expect(await fleet.until(() => undefined, 10, new AbortController().signal)).toBeUndefined();
    const gone = new AbortController();
    const aborted = fleet.until(() => undefined, 10_000, gone.signal);
    gone.abort();
    expect(await aborted).toBeUndefined();
  });
});
