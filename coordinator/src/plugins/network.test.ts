import { randomBytes } from "node:crypto";
import { type TestDatabase, testDatabase, waitFor } from "@sharedllm/testkit";
import { SimNode } from "@sharedllm/testkit/simNode";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createApiKey } from "../apiKeys.js";
import { type Coordinator, startCoordinator } from "../coordinator.js";

const joinToken = randomBytes(32).toString("base64url");
const HEARTBEAT_MS = 200;
let c: Coordinator;
let apiKey: string;
const sims: SimNode[] = [];

let database: TestDatabase;
beforeEach(async () => {
  database = await testDatabase();
  c = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    heartbeatIntervalMs: HEARTBEAT_MS,
    logger: pino({ level: "silent" }),
  });
  apiKey = (await createApiKey(c.db, "t")).secret;
});
afterEach(async () => {
  for (const s of sims.splice(0)) s.stop();
  await c?.close();
  await database?.cleanup();
});

async function sim(opts: ConstructorParameters<typeof SimNode>[0] extends infer O ? Partial<O> : never = {}) {
  const s = new SimNode({ coordinatorUrl: c.url, joinToken, ...opts });
  sims.push(s);
  await s.start();
  return s;
}

interface Network {
  nodes: { id: string; status: string; tokensPerSecond: number | null; models: string[]; accepting: boolean; reason: string | null }[];
  totals: { online: number; offline: number };
}
const network = async () => (await (await fetch(`${c.url}/v1/network`)).json()) as Network;

describe("heartbeats and the network view", () => {
  it("shows online nodes with their heartbeat data", async () => {
    const a = await sim();
    await waitFor("a heartbeat", async () => (await network()).nodes.find((n) => n.id === a.id)?.tokensPerSecond === 42);
    const net = await network();
    expect(net.totals).toEqual({ online: 1, offline: 0, activeJobs: 0 });
    expect(net.nodes[0]).toMatchObject({ id: a.id, status: "online", models: ["sim-model"] });
  });

  it("a node that misses three heartbeats goes offline, its job fails cleanly, and new jobs go elsewhere", async () => {
    const silent = await sim({ onJob: () => {} });
    silent.heartbeats = false;
    const post = (stream: boolean) =>
      fetch(`${c.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], stream }),
      });
    const started = Date.now();
    const stuck = post(false);
    await waitFor("the job to reach the silent node", () => silent.jobsSeen === 1);
    const res = await stuck;
    // retried nowhere (no other node), so the client hears that the node went away
    expect(res.status).toBe(502);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/went away|failed/);
    expect(Date.now() - started).toBeLessThan(HEARTBEAT_MS * 3 + 2_000);
    const net = await network();
    expect(net.nodes.find((n) => n.id === silent.id)?.status).toBe("offline");
    // the journal tells the node's story in order
    const story = await waitFor("the disconnect to be journalled", async () => {
      const rows = await c.db.selectFrom("events").select("kind").where("node_id", "=", silent.id).orderBy("id").execute();
      return rows.length === 4 ? rows.map((r) => r.kind) : undefined;
    });
    expect(story).toEqual(["node.registered", "node.connected", "node.offline", "node.disconnected"]);

    const healthy = await sim();
    const ok = await post(true);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain("data: [DONE]");
    expect(healthy.jobsSeen).toBe(1);
    expect(silent.jobsSeen).toBe(1);
  });

  it("exports Prometheus metrics", async () => {
    await sim();
    await fetch(`${c.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }] }),
    });
    const text = await (await fetch(`${c.url}/metrics`)).text();
    expect(text).toMatch(/^sharedllm_nodes_online 1$/m);
    expect(text).toMatch(/^sharedllm_jobs_total\{status="completed",model="sim-model"\} 1$/m);
    expect(text).toMatch(/^sharedllm_tokens_total\{type="completion",model="sim-model"\} 2$/m);
  });

  it("a node that yields to its owner hands its jobs off at once: cancelled there, carried on elsewhere; the network view says why", async () => {
    const cancelled: string[] = [];
    const busy = await sim({
      onJob: () => {},
      onFrame: (f) => {
        if (f.type === "job.cancel") cancelled.push(f.jobId);
      },
    });
    const res = fetch(`${c.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }] }),
    });
    await waitFor("the job to reach the node", () => busy.jobsSeen === 1);
    const other = await sim();
    busy.send({ type: "availability", accepting: false, reason: "owner_busy", handOff: true });
    const done = await res;
    expect(done.status).toBe(200);
    expect(done.headers.get("x-sharedllm-node")).toBe(other.id);
    expect(cancelled).toHaveLength(1);
    // a node may start without taking jobs, and say why
    const onBattery = await sim({ hello: { accepting: false, reason: "on_battery" } });
    const view = (await network()).nodes;
    expect(view.find((n) => n.id === busy.id)).toMatchObject({ accepting: false, reason: "owner_busy" });
    expect(view.find((n) => n.id === onBattery.id)).toMatchObject({ accepting: false, reason: "on_battery" });
    expect(view.find((n) => n.id === other.id)).toMatchObject({ accepting: true, reason: null });
    // a pause without a hand-off (an older node) is no yield; each hand-off is
    busy.send({ type: "availability", accepting: true, reason: "resumed" });
    busy.send({ type: "availability", accepting: false, reason: "paused" });
    busy.send({ type: "availability", accepting: true, reason: "resumed" });
    busy.send({ type: "availability", accepting: false, reason: "paused", handOff: true });
    await waitFor("the pause seen", async () => (await network()).nodes.some((n) => n.id === busy.id && n.reason === "paused"));
    const text = await (await fetch(`${c.url}/metrics`)).text();
    expect(text).toMatch(/^sharedllm_yields_total\{cause="owner_busy"\} 1$/m);
    expect(text).toMatch(/^sharedllm_yields_total\{cause="paused"\} 1$/m);
  });
});
