/**
 * Replicas of one coordinator (docs/replicas.md): coordinators on one PostgreSQL database and one
 * NATS server (a test's own). A node's control channel ends at one replica; a request through any
 * replica is served by it, streamed or not, and the site's views show it from every replica.
 * PostgreSQL only: replicas share a database, which embedded PGlite cannot be.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Coordinator, createApiKey, NODE_HEADER, startCoordinator } from "@sharedllm/coordinator";
import type { NetworkResponse } from "@sharedllm/protocol";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { journalSum, quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { startNats, type TestNats } from "../nats.ts";
import { countTo, SimNode, signsReceipts } from "../simNode.ts";

const joinToken = randomBytes(32).toString("base64url");
let nats: TestNats;
let database: TestDatabase;
const replicas: Coordinator[] = [];
const sims: SimNode[] = [];
let apiKey: string;

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");

const tenTokens = countTo(10, 20);

/** The text of a streamed chat's events. */
const streamedText = (body: string) =>
  body
    .split("\n")
    .filter((l) => l.startsWith("data: {"))
    .map((l) => JSON.parse(l.slice(6)).choices[0]?.delta?.content ?? "")
    .join("");

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
          // a request whose model's nodes have all left is refused after a short wait
          queueWaitMs: 1_000,
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
      expect(streamedText(streamed.text)).toBe(" t1 t2 t3 t4 t5 t6 t7 t8 t9 t10");
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

describe.skipIf(!process.env.DATABASE_URL)("paid jobs across replicas", () => {
  let chain: TestChain;
  let paidDb: TestDatabase;
  let paidNats: TestNats;
  const paid: Coordinator[] = [];
  let node: SimNode;

  beforeAll(async () => {
    chain = await startTestChain();
    paidNats = await startNats();
    paidDb = await testDatabase();
    const token = randomBytes(32).toString("base64url");
    // two replicas of one coordinator: its key, its database; settlement only when the test says
    for (let i = 0; i < 2; i++) {
      paid.push(
        await startCoordinator({
          host: "127.0.0.1",
          port: 0,
          dataDir: paidDb.dataDir,
          databaseUrl: paidDb.databaseUrl,
          joinToken: token,
          logger: quietLogger(),
          replicas: { natsUrl: paidNats.url },
          ledger: {
            chain: { rpcUrl: chain.rpcUrl, ledger: chain.ledger, account: chain.coordinator },
            settlement: { maxAgeMs: 600_000, checkEveryMs: 600_000 },
          },
        }),
      );
    }
    // the node is held by the second replica and signs every receipt it is asked for
    const holder = paid[1] as Coordinator;
    node = new SimNode({
      coordinatorUrl: holder.url,
      joinToken: token,
      models: ["sim-model"],
      onJob: tenTokens,
      onReceiptRequest: (req, send) => signsReceipts(node.account)(req, send),
    });
    await node.start();
    await waitFor("both replicas to see the node", () => paid.every((r) => r.fleet.servesModel("sim-model")), 10_000);
  }, 120_000);

  afterAll(async () => {
    node?.stop();
    for (const r of paid) await r.close();
    await paidDb?.cleanup();
    await paidNats?.stop();
    await chain?.stop();
  });

  it("concurrent spending through both replicas cannot overspend; the node's receipts come back through its replica; the chain agrees", async () => {
    const [a, b] = paid as [Coordinator, Coordinator];
    const user = devWallet(21);
    // a request holds its worst case, 111 prompt + 2 * 10 completion credits: the deposit covers 5 at once
    const deposit = 700n;
    await chain.fund(user.address);
    await chain.deposit(user, deposit, chain.coordinator.address);
    const key = await createKey(a.url, await signIn(a.url, user, chain.chainId));
    // 24 requests at once, half through each replica, while the first are still running (200 ms each)
    const statuses = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const res = await fetch(`${(i % 2 ? b : a).url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 10 }),
        });
        await res.arrayBuffer();
        return res.status;
      }),
    );
    const served = statuses.filter((s) => s === 200).length;
    expect(statuses.every((s) => s === 200 || s === 402)).toBe(true);
    expect(statuses).toContain(402);
    expect(served).toBeGreaterThan(0);
    const user_ = user.address.toLowerCase();
    // 3 prompt + 10 completion tokens = 23 credits a job, charged once each
    const charged = await journalSum(a.db, user_, "charge");
    expect(charged).toBe(23n * BigInt(served));
    expect(charged).toBeLessThanOrEqual(deposit);
    // no hold is left behind
    expect(await journalSum(a.db, user_, "hold")).toBe(await journalSum(a.db, user_, "release"));
    // every served job's receipt was proposed by the replica that ran it and signed by the node on the other one
    await waitFor(
      "the node's receipts",
      async () => {
        const { rows } = await sql<{ n: string }>`select count(*) as n from receipts where status = 'accepted'`.execute(a.db);
        return Number(rows[0]?.n) === served;
      },
      15_000,
    );
    expect(await journalSum(a.db, node.id, "earn")).toBeGreaterThan(0n);
    // settled by one replica: the chain holds what the journal holds
    await a.ledger?.settler.tick(true);
    expect((await chain.escrow(user.address, chain.coordinator.address)).spent).toBe(charged);
  });
});

describe.skipIf(!process.env.DATABASE_URL)("a replica killed mid-stream", () => {
  it("a stream from another replica on a node it held carries on on another node", async () => {
    const killNats = await startNats();
    const db = await testDatabase();
    const home = await tempPaths("sharedllm-replica-");
    const token = randomBytes(32).toString("base64url");
    await writeFile(join(home.home, "secrets.json"), JSON.stringify({ joinToken: token }), { mode: 0o600 });
    const a = await startCoordinator({
      host: "127.0.0.1",
      port: 0,
      dataDir: db.dataDir,
      databaseUrl: db.databaseUrl,
      joinToken: token,
      logger: quietLogger(),
      replicas: { natsUrl: killNats.url },
    });
    // replica B, a process of its own, that will be killed as a power cut would
    const b = spawn(process.execPath, [BIN, "coordinator", "start", "--port", "0", "--nats-url", killNats.url], {
      env: { ...process.env, SHAREDLLM_HOME: home.home, DATABASE_URL: db.databaseUrl },
      stdio: "ignore",
      detached: true,
    });
    const bExited = new Promise((r) => b.once("exit", r));
    const sims: SimNode[] = [];
    try {
      const bUrl = await waitFor(
        "replica B",
        async () => (JSON.parse(await readFile(join(home.home, "coordinator.json"), "utf8")) as { url: string }).url,
        60_000,
        100,
      );
      const onB = new SimNode({ coordinatorUrl: bUrl, joinToken: token, models: ["sim-model"], onJob: countTo(10, 150) });
      sims.push(onB);
      await onB.start();
      await waitFor("A to see B's node", () => a.fleet.servesModel("sim-model"), 10_000);
      const key = (await createApiKey(a.db, "kill")).secret;
      const res = await fetch(`${a.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "sim-model", stream: true, max_tokens: 10, messages: [{ role: "user", content: "go" }] }),
      });
      expect(res.headers.get(NODE_HEADER)).toBe(onB.id);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      let body = new TextDecoder().decode((await reader.read()).value);
      // a node of A's own joins, and B dies mid-stream
      const onA = new SimNode({ coordinatorUrl: a.url, joinToken: token, models: ["sim-model"], onJob: countTo(10, 5) });
      sims.push(onA);
      await onA.start();
      process.kill(-(b.pid as number), "SIGKILL");
      await bExited;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        body += new TextDecoder().decode(value);
      }
      // the client sees one whole answer: B's node's first tokens, then A's node's rest
      expect(streamedText(body)).toBe(" t1 t2 t3 t4 t5 t6 t7 t8 t9 t10");
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(onA.jobsSeen).toBe(1);
      const job = await a.db.selectFrom("jobs").select(["status"]).executeTakeFirstOrThrow();
      expect(job.status).toBe("completed");
    } finally {
      for (const s of sims) s.stop();
      if (b.exitCode === null && b.signalCode === null) process.kill(-(b.pid as number), "SIGKILL");
      await a.close();
      await db.cleanup();
      await home.cleanup();
      await killNats.stop();
    }
  });
});
