/**
 * Replicas of one coordinator (docs/replicas.md): coordinators on one PostgreSQL database and one
 * NATS server (a test's own). A node's control channel ends at one replica; a request through any
 * replica is served by it, streamed or not, and the site's views show it from every replica.
 * PostgreSQL only: replicas share a database, which embedded PGlite cannot be.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, createApiKey, NODE_HEADER, startCoordinator } from "@sharedllm/coordinator";
import type { JobStart, NetworkResponse, NodeFrame } from "@sharedllm/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { startNats, type TestNats } from "../nats.ts";
import { SimNode } from "../simNode.ts";

const joinToken = randomBytes(32).toString("base64url");
let nats: TestNats;
let database: TestDatabase;
const replicas: Coordinator[] = [];
const sims: SimNode[] = [];
let apiKey: string;

/** 10 tokens, one every 20 ms */
function tenTokens(job: JobStart, send: (f: NodeFrame) => void): void {
  let i = 0;
  const timer = setInterval(() => {
    if (i === 10) {
      clearInterval(timer);
      send({ type: "job.end", jobId: job.jobId, usage: { prompt_tokens: 3, completion_tokens: 10, total_tokens: 13 } });
      return;
    }
    i++;
    const data = JSON.stringify({ choices: [{ index: 0, delta: { content: ` t${i}` } }] });
    send({ type: "job.chunk", jobId: job.jobId, data, tokens: [i] });
  }, 20);
}

async function chat(url: string, stream: boolean): Promise<{ status: number; node: string | null; text: string }> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "sim-model", stream, max_tokens: 10, messages: [{ role: "user", content: "go" }] }),
  });
  return { status: res.status, node: res.headers.get(NODE_HEADER), text: await res.text() };
}

describe.skipIf(!process.env.DATABASE_URL)("replicas on one PostgreSQL and one NATS", () => {
  beforeAll(async () => {
    nats = await startNats();
    database = await testDatabase();
    for (let i = 0; i < 3; i++) {
      replicas.push(
        await startCoordinator({
          host: "127.0.0.1",
          port: 0,
          dataDir: database.dataDir,
          databaseUrl: database.databaseUrl,
          joinToken,
          logger: quietLogger(),
          replicas: { natsUrl: nats.url },
        }),
      );
    }
    apiKey = (await createApiKey((replicas[0] as Coordinator).db, "replicas")).secret;
  }, 60_000);

  afterAll(async () => {
    for (const s of sims) await s.stop();
    for (const r of replicas) await r.close();
    await database?.cleanup();
    await nats?.stop();
  });

  it("a request through any replica is served by a node another replica holds, streamed or not", async () => {
    const [a, b, c] = replicas as [Coordinator, Coordinator, Coordinator];
    const sim = new SimNode({ coordinatorUrl: b.url, joinToken, models: ["sim-model"], onJob: tenTokens });
    sims.push(sim);
    await sim.start();
    await waitFor("every replica to see the node", () => replicas.every((r) => r.fleet.servesModel("sim-model")), 10_000);
    for (const r of [a, c]) {
      const plain = await chat(r.url, false);
      expect(plain.status).toBe(200);
      expect(plain.node).toBe(sim.id);
      expect(JSON.parse(plain.text).choices[0].message.content).toBe(" t1 t2 t3 t4 t5 t6 t7 t8 t9 t10");
      const streamed = await chat(r.url, true);
      expect(streamed.status).toBe(200);
      expect(streamed.node).toBe(sim.id);
      const content = streamed.text
        .split("\n")
        .filter((l) => l.startsWith("data: {"))
        .map((l) => JSON.parse(l.slice(6)).choices[0]?.delta?.content ?? "")
        .join("");
      expect(content).toBe(" t1 t2 t3 t4 t5 t6 t7 t8 t9 t10");
      expect(streamed.text.trimEnd().endsWith("data: [DONE]")).toBe(true);
    }
    // the site's views are the same through every replica
    for (const r of replicas) {
      const network = (await (await fetch(`${r.url}/v1/network`)).json()) as NetworkResponse;
      expect(network.nodes.filter((n) => n.status === "online").map((n) => n.id)).toEqual([sim.id]);
      const health = (await (await fetch(`${r.url}/healthz`)).json()) as { nodes: number; models: string[] };
      expect(health).toMatchObject({ nodes: 1, models: ["sim-model"] });
    }
    // every job is one row, completed, in the shared database
    const rows = await a.db.selectFrom("jobs").select(["status", "node_id"]).execute();
    expect(rows).toHaveLength(4);
    expect(rows.every((r) => r.status === "completed" && r.node_id === sim.id)).toBe(true);
  });

  it("a node that leaves its replica leaves every replica's view at once", async () => {
    const [a, b] = replicas as [Coordinator, Coordinator];
    const sim = sims[0] as SimNode;
    await sim.stop();
    await waitFor("the node gone from every replica", () => replicas.every((r) => !r.fleet.servesModel("sim-model")), 5_000);
    const res = await chat(a.url, false);
    expect(res.status).toBe(503);
    expect(b.fleet.size).toBe(0);
  });
});
