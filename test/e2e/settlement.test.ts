/**
 * Receipts and settlement against the real chain, with simulated nodes (the real control protocol,
 * no engine): forged receipts are rejected with their reason; a coordinator killed between sending
 * a settlement and recording it settles exactly once after a restart; a stuck settlement is
 * replaced with higher fees and mined once.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chainClients } from "@sharedllm/cli";
import {
  CreditLedger,
  DEV_DEPLOYER_KEY,
  DEV_TIMELOCK_DELAY_S,
  executeArgs,
  governanceCall,
  scheduleArgs,
  TimelockController,
} from "@sharedllm/contracts";
import { type Database, type Db, openDatabase, type SettlementOptions, startCoordinator } from "@sharedllm/coordinator";
import {
  type ClusterMembers,
  type CoordinatorFrame,
  clusterLayersMessage,
  earningsTree,
  type ReceiptRequest,
  receiptFromWire,
  workReceiptTypedData,
} from "@sharedllm/protocol";
import { type Kysely, sql } from "kysely";
import { pino } from "pino";
import type { Abi, Address, LocalAccount } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { SimNode, signsReceipts } from "../simNode.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
/** echoJob's usage is 3 prompt + 2 completion tokens: 3 + 2*2 credits */
const JOB_COST = 7n;

let chain: TestChain;
const cleanups: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  chain = await startTestChain();
}, 120_000);
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await chain?.stop();
});

/** A coordinator with the ledger on the test chain (settling as a fresh coordinator account when asked). */
async function ledgerCoordinator(
  settlement: SettlementOptions,
  opts: { ownAccount?: boolean; account?: LocalAccount; logger?: ReturnType<typeof quietLogger> } = {},
) {
  const db = await testDatabase();
  cleanups.push(db.cleanup);
  const joinToken = randomBytes(32).toString("base64url");
  const account = opts.account ?? (opts.ownAccount ? privateKeyToAccount(generatePrivateKey()) : chain.coordinator);
  if (opts.ownAccount) await chain.addCoordinator(account.address);
  const coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...db,
    joinToken,
    logger: opts.logger ?? quietLogger(),
    ledger: { chain: { rpcUrl: chain.rpcUrl, ledger: chain.ledger, account }, settlement },
  });
  cleanups.push(() => coordinator.close());
  return { coordinator, joinToken, account };
}

/** A simulated node that signs every receipt it is asked for, as proposed. */
async function honestNode(url: string, joinToken: string): Promise<SimNode> {
  const sim: SimNode = new SimNode({
    coordinatorUrl: url,
    joinToken,
    models: ["sim-model"],
    onReceiptRequest: (req, send) => signsReceipts(sim.account)(req, send),
  });
  await sim.start();
  cleanups.push(() => sim.stop());
  return sim;
}

/** Sends a transaction from `from` and waits for it to be mined. */
async function send(
  from: LocalAccount,
  functionName: string,
  args: readonly unknown[],
  to: Address = chain.ledger,
  abi: Abi = CreditLedger.abi,
) {
  const { wallet } = chainClients(chain.rpcUrl, chain.chainId, from);
  const hash = await (wallet as NonNullable<typeof wallet>).writeContract({ address: to, abi, functionName, args } as never);
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash });
  expect(receipt.status).toBe("success");
}

const acceptedReceipts = async (db: Db) => (await db.selectFrom("receipts").select("id").where("status", "=", "accepted").execute()).length;

async function paidKey(url: string, user: LocalAccount, coordinator: Address, credits = 1_000n) {
  await chain.fund(user.address);
  await chain.deposit(user, credits, coordinator);
  return createKey(url, await signIn(url, user, chain.chainId));
}

async function chat(url: string, key: string) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 8 }),
  });
  expect(res.status).toBe(200);
}

/** A worker's report, signed by its own key, of the layers a head placed on it (as worker.ts sends it). */
async function reportLayers(worker: SimNode, head: SimNode, sessionId: string, firstLayer: number, layerCount: number) {
  const fields = { sessionId, head: head.id as Address, firstLayer, layerCount, contiguous: true, tensorBytes: layerCount * 2_216_448 };
  const signature = await worker.account.signMessage({ message: clusterLayersMessage({ ...fields, worker: worker.id }) });
  worker.send({ type: "cluster.layers", ...fields, signature });
}

describe("work receipts", () => {
  it("rejects a wrong signer, altered token counts and a replayed job, and pays the honest receipt once", async () => {
    const { coordinator, joinToken } = await ledgerCoordinator({ maxAgeMs: 1_200_000, checkEveryMs: 60_000 });
    let answer: (req: ReceiptRequest, send: (f: never) => void) => Promise<void> = async () => {};
    const sim = new SimNode({
      coordinatorUrl: coordinator.url,
      joinToken,
      models: ["sim-model"],
      onReceiptRequest: (req, send) => void answer(req, send as never),
    });
    await sim.start();
    cleanups.push(() => sim.stop());
    const sign = (req: ReceiptRequest, by: LocalAccount, change: (r: ReturnType<typeof receiptFromWire>) => void = () => {}) => {
      const receipt = receiptFromWire(req.receipt);
      change(receipt);
      return by.signTypedData(workReceiptTypedData(receipt, req.domain)).then((signature) => ({
        ...req.receipt,
        promptTokens: receipt.promptTokens,
        completionTokens: receipt.completionTokens,
        signature,
      }));
    };
    const receipts = () =>
      coordinator.db
        .selectFrom("receipts")
        .select(["status", "reason", "job_id"])
        .where("node_address", "=", sim.id)
        .orderBy("id")
        .execute();
    const key = await paidKey(coordinator.url, devWallet(10), chain.coordinator.address);

    // 1. signed by some other key
    answer = async (req, send) => {
      const { signature, ...receipt } = await sign(req, privateKeyToAccount(generatePrivateKey()));
      send({ type: "receipt", receipt, signature } as never);
    };
    await chat(coordinator.url, key);
    await waitFor("the first receipt", async () => (await receipts()).length === 1);

    // 2. the node's own signature over inflated token counts
    answer = async (req, send) => {
      const { signature, ...receipt } = await sign(req, sim.account, (r) => {
        r.completionTokens += 5;
      });
      send({ type: "receipt", receipt, signature } as never);
    };
    await chat(coordinator.url, key);
    await waitFor("the second receipt", async () => (await receipts()).length === 2);

    // 3. honest, then the same signed receipt again
    answer = async (req, send) => {
      const { signature, ...receipt } = await sign(req, sim.account);
      send({ type: "receipt", receipt, signature } as never);
      await waitFor("the honest receipt", async () => (await receipts()).length === 3);
      send({ type: "receipt", receipt, signature } as never);
    };
    await chat(coordinator.url, key);
    const rows = await waitFor("the replayed receipt", async () => {
      const r = await receipts();
      return r.length === 4 ? r : undefined;
    });

    expect(rows.map((r) => r.status)).toEqual(["rejected", "rejected", "accepted", "rejected"]);
    expect(rows[0]?.reason).toContain("signature is not by the node");
    expect(rows[1]?.reason).toMatch(/completionTokens 7 does not match the coordinator's metering \(2\)/);
    expect(rows[3]?.reason).toContain("replayed");
    expect(rows[3]?.job_id).toBe(rows[2]?.job_id);
    const { earned } = await coordinator.db
      .selectFrom("ledger_entries")
      .select(sql<string>`sum(amount)`.as("earned"))
      .where("address", "=", sim.id)
      .where("kind", "=", "earn")
      .executeTakeFirstOrThrow();
    expect(BigInt(earned)).toBe(JOB_COST);
  });
});

describe("split clusters", () => {
  const sign = (by: SimNode) => signsReceipts(by.account);
  const earned = async (coordinator: { db: Kysely<Database> }, node: SimNode) =>
    BigInt(
      (
        await coordinator.db
          .selectFrom("ledger_entries")
          .select(sql<string | null>`sum(amount)`.as("t"))
          .where("address", "=", node.id)
          .where("kind", "=", "earn")
          .executeTakeFirstOrThrow()
      ).t ?? 0,
    );
  /** A node of the given role that signs every receipt proposed to it and takes every cluster session. */
  async function signingNode(
    url: string,
    joinToken: string,
    hello: Record<string, unknown>,
    frames: CoordinatorFrame[] = [],
    models = ["sim-model"],
  ) {
    const n: SimNode = new SimNode({
      coordinatorUrl: url,
      joinToken,
      models,
      hello,
      onReceiptRequest: (req, send) => sign(n)(req, send as never),
      onFrame: (f, send) => {
        frames.push(f);
        if (f.type === "tunnel.session") send({ type: "tunnel.ready", sessionId: f.sessionId });
      },
    });
    await n.start();
    cleanups.push(() => n.stop());
    return n;
  }
  const workerHello = (i: number) => ({ role: "worker", tunnel: { port: 7000 + i, tls: false, speed: 10 } });

  it("pays every member of a split by its layer share, each signing its own receipt", async () => {
    const { coordinator, joinToken } = await ledgerCoordinator({ maxAgeMs: 1_200_000, checkEveryMs: 60_000 });
    const vias: (string | undefined)[] = [];
    const workers: SimNode[] = [];
    for (let i = 0; i < 2; i++) {
      const w: SimNode = new SimNode({
        coordinatorUrl: coordinator.url,
        joinToken,
        models: [],
        hello: workerHello(i),
        onReceiptRequest: (req, send) => {
          vias.push(req.via);
          sign(w)(req, send as never);
        },
        onFrame: (f, send) => f.type === "tunnel.session" && send({ type: "tunnel.ready", sessionId: f.sessionId }),
      });
      await w.start();
      cleanups.push(() => w.stop());
      workers.push(w);
    }
    const headFrames: CoordinatorFrame[] = [];
    const head = await signingNode(coordinator.url, joinToken, { role: "head" }, headFrames);
    head.send({ type: "cluster.form", sessionId: "session-1", members: workers.map((w) => w.id), expiresAt: Date.now() + 60_000 });
    await waitFor("the cluster to form", () => headFrames.some((f) => f.type === "cluster.members" && f.members.length === 2));
    head.send({
      type: "cluster.plan",
      members: [
        { nodeId: workers[0]?.id as string, firstLayer: 0, layerCount: 20, shareBps: 6667 },
        { nodeId: workers[1]?.id as string, firstLayer: 20, layerCount: 10, shareBps: 3333 },
      ],
    });
    // the split counts once each member's own report says the same
    await reportLayers(workers[0] as SimNode, head, "session-1", 0, 20);
    await reportLayers(workers[1] as SimNode, head, "session-1", 20, 10);
    await waitFor("the split to show", () => coordinator.fleet.get(head.id)?.cluster?.length === 2);
    const key = await paidKey(coordinator.url, devWallet(16), chain.coordinator.address);
    for (let i = 0; i < 3; i++) await chat(coordinator.url, key);
    await waitFor(
      "six receipts",
      async () => (await coordinator.db.selectFrom("receipts").select("id").where("status", "=", "accepted").execute()).length === 6,
    );
    // 7 credits a job, split 6667/3333 bps: 4 + 2 with the rounding unit to the first member, three jobs
    expect(await earned(coordinator, workers[0] as SimNode)).toBe(3n * 5n);
    expect(await earned(coordinator, workers[1] as SimNode)).toBe(3n * 2n);
    expect((await earned(coordinator, workers[0] as SimNode)) + (await earned(coordinator, workers[1] as SimNode))).toBe(3n * JOB_COST);
    expect(await earned(coordinator, head)).toBe(0n);
    expect(new Set(vias)).toEqual(new Set([head.id]));
  });

  it("refuses splits that name strangers or pay more than 10000 bps, so a job never pays more than its charge", async () => {
    const { coordinator, joinToken } = await ledgerCoordinator({ maxAgeMs: 1_200_000, checkEveryMs: 60_000 });
    // the attacker serves the model (alone, so it gets every job) and runs two sock-puppet nodes
    // that sign whatever they are offered
    const attackerFrames: CoordinatorFrame[] = [];
    const attacker = await signingNode(coordinator.url, joinToken, {}, attackerFrames);
    const puppets = [
      await signingNode(coordinator.url, joinToken, {}, [], []),
      await signingNode(coordinator.url, joinToken, workerHello(1), [], []),
    ];
    const at10000 = (ids: string[]) => ids.map((nodeId, i) => ({ nodeId, firstLayer: i * 10, layerCount: 10, shareBps: 10_000 }));
    // 1. a solo node announces a split over its puppets at 10000 bps each, without forming anything
    attacker.send({ type: "cluster.plan", members: at10000(puppets.map((p) => p.id)) });
    // 2. it cannot form a cluster either: it is not a head
    attacker.send({ type: "cluster.form", sessionId: "session-x", members: [puppets[1]?.id as string], expiresAt: Date.now() + 1e12 });
    await waitFor(
      "both refusals",
      () => attackerFrames.filter((f) => f.type === "error" || (f.type === "cluster.members" && f.refused)).length === 2,
    );
    expect(coordinator.fleet.get(attacker.id)?.cluster).toBeUndefined();
    // every paid job pays out exactly its charge, and the puppets nothing
    const key = await paidKey(coordinator.url, devWallet(17), chain.coordinator.address);
    for (let i = 0; i < 2; i++) await chat(coordinator.url, key);
    const accepted = async () =>
      (await coordinator.db.selectFrom("receipts").select("id").where("status", "=", "accepted").execute()).length;
    await waitFor("two receipts", async () => (await accepted()) === 2);
    expect(await earned(coordinator, attacker)).toBe(2n * JOB_COST);
    for (const p of puppets) expect(await earned(coordinator, p)).toBe(0n);

    // 3. a real head with a formed cluster may not overpay its member, name it twice or add a stranger
    const headFrames: CoordinatorFrame[] = [];
    const head = await signingNode(coordinator.url, joinToken, { role: "head" }, headFrames);
    const worker = puppets[1] as SimNode;
    head.send({ type: "cluster.form", sessionId: "session-1", members: [worker.id], expiresAt: Date.now() + 10 * 24 * 3600_000 });
    const formed = await waitFor("the cluster to form", () =>
      headFrames.find((f): f is ClusterMembers => f.type === "cluster.members" && f.members.length === 1),
    );
    expect(formed.expiresAt).toBeLessThanOrEqual(Date.now() + 24 * 3600_000);
    head.send({ type: "cluster.plan", members: at10000([worker.id, head.id]) });
    head.send({ type: "cluster.plan", members: at10000([worker.id, worker.id]) });
    head.send({ type: "cluster.plan", members: [{ nodeId: puppets[0]?.id as string, firstLayer: 0, layerCount: 10, shareBps: 10_000 }] });
    await waitFor("three refusals", () => headFrames.filter((f) => f.type === "error").length === 3);
    expect(coordinator.fleet.get(head.id)?.cluster).toBeUndefined();
    expect(await accepted()).toBe(2);
    // 4. a head without an accepted split gets no jobs: it would be paid alone for its workers' work
    expect(coordinator.fleet.get(head.id)?.accepting).toBe(false);
    for (let i = 0; i < 2; i++) await chat(coordinator.url, key);
    await waitFor("four receipts", async () => (await accepted()) === 4);
    expect(await earned(coordinator, head)).toBe(0n);
    expect(await earned(coordinator, attacker)).toBe(4n * JOB_COST);
  });
  it("refuses a split whose layers a member's own signed report contradicts, and pays nobody by it", async () => {
    const warnings: Record<string, unknown>[] = [];
    const logger = pino({ level: "warn" }, { write: (line: string) => warnings.push(JSON.parse(line)) });
    const { coordinator, joinToken } = await ledgerCoordinator({ maxAgeMs: 1_200_000, checkEveryMs: 60_000 }, { logger });
    const warned = (msg: string) => warnings.filter((w) => w.msg === msg);
    // a solo node serves the model too: the jobs go to it while the head has no split
    const solo = await signingNode(coordinator.url, joinToken, {});
    // the attacker runs a head and a sock-puppet worker; the honest worker reports what it holds
    const headFrames: CoordinatorFrame[] = [];
    const head = await signingNode(coordinator.url, joinToken, { role: "head" }, headFrames);
    const puppet = await signingNode(coordinator.url, joinToken, workerHello(0), [], []);
    const honest = await signingNode(coordinator.url, joinToken, workerHello(1), [], []);
    const form = async (sessionId: string) => {
      head.send({ type: "cluster.form", sessionId, members: [puppet.id, honest.id], expiresAt: Date.now() + 60_000 });
      await waitFor("the cluster to form", () => headFrames.some((f) => f.type === "cluster.members" && f.sessionId === sessionId));
    };
    const errors = () => headFrames.flatMap((f) => (f.type === "error" ? [f.message] : []));
    /** the head gives the puppet 0-19 (two thirds of every job) and the honest worker 20-29 */
    const inflated = [
      { nodeId: puppet.id, firstLayer: 0, layerCount: 20, shareBps: 6667 },
      { nodeId: honest.id, firstLayer: 20, layerCount: 10, shareBps: 3333 },
    ];

    // 1. it placed layers 15-29 on the honest worker; the puppet signs whatever the head claims
    await form("session-a");
    head.send({ type: "cluster.plan", members: inflated });
    await reportLayers(puppet, head, "session-a", 0, 20);
    await reportLayers(honest, head, "session-a", 15, 15);
    await waitFor("the split refused", () => errors().length === 1);
    expect(errors()[0]).toBe(`cluster split refused: ${honest.id} holds layers 15-29 by its own report, not 20-29`);
    expect(warned("cluster split refused: a member's own report differs")).toEqual([
      expect.objectContaining({ head: head.id, member: honest.id, claimed: "20-29", observed: "15-29" }),
    ]);
    expect(coordinator.fleet.get(head.id)?.cluster).toBeUndefined();

    // 2. the head names only the puppet, for all 30 layers, while the honest worker holds 0-19
    await form("session-b");
    head.send({ type: "cluster.plan", members: [{ nodeId: puppet.id, firstLayer: 0, layerCount: 30, shareBps: 10_000 }] });
    await reportLayers(puppet, head, "session-b", 0, 30);
    await reportLayers(honest, head, "session-b", 0, 20);
    await waitFor("the split refused", () => errors().length === 2);
    expect(errors()[1]).toBe(`cluster split refused: ${honest.id} holds layers 0-19 by its own report, and the split does not name it`);

    // 3. nobody reports for the honest worker: not the head from its own channel, not the puppet
    //    with its own key, not the puppet replaying the honest worker's signed report
    await form("session-c");
    head.send({ type: "cluster.plan", members: inflated });
    await reportLayers(puppet, head, "session-c", 0, 20);
    const fields = { sessionId: "session-c", head: head.id as Address, firstLayer: 20, layerCount: 10, contiguous: true, tensorBytes: 1 };
    const message = clusterLayersMessage({ ...fields, worker: honest.id });
    head.send({ type: "cluster.layers", ...fields, signature: await head.account.signMessage({ message }) });
    puppet.send({ type: "cluster.layers", ...fields, signature: await puppet.account.signMessage({ message }) });
    puppet.send({ type: "cluster.layers", ...fields, signature: await honest.account.signMessage({ message }) });
    await waitFor("three reports refused", () => warnings.filter((w) => String(w.msg).startsWith("layer report refused")).length === 3);
    // the split stays unconfirmed: no split job goes to the head, none pays its members
    const key = await paidKey(coordinator.url, devWallet(18), chain.coordinator.address);
    for (let i = 0; i < 2; i++) await chat(coordinator.url, key);
    const accepted = async () =>
      (await coordinator.db.selectFrom("receipts").select("id").where("status", "=", "accepted").execute()).length;
    await waitFor("two receipts", async () => (await accepted()) === 2);
    expect(coordinator.fleet.get(head.id)?.cluster).toBeUndefined();
    expect(coordinator.fleet.get(head.id)?.accepting).toBe(false);
    expect(await earned(coordinator, solo)).toBe(2n * JOB_COST);
    for (const n of [head, puppet, honest]) expect(await earned(coordinator, n)).toBe(0n);
    expect(errors()).toHaveLength(2);
  });
});

describe("settlement", () => {
  function startCli(args: string[], env: NodeJS.ProcessEnv) {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (b) => {
      stdout += b;
    });
    child.stderr?.on("data", (b) => {
      stderr += b;
    });
    const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on("exit", (code, signal) => r(signal ?? code)));
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), "SIGKILL");
    });
    return { child: child as ChildProcess, exited, out: () => ({ stdout, stderr }) };
  }

  /**
   * A home for `sharedllm coordinator start` processes of one coordinator: its key (a fresh
   * coordinator account on the chain), its join token and its database; the command's arguments
   * (settling at once) and environment.
   */
  async function coordinatorHome(prefix: string) {
    const home = await tempPaths(prefix);
    const db = await testDatabase();
    cleanups.push(db.cleanup, home.cleanup);
    const key = generatePrivateKey();
    const account = privateKeyToAccount(key);
    const joinToken = randomBytes(32).toString("base64url");
    await writeFile(join(home.home, "coordinator-key.json"), JSON.stringify({ address: account.address, privateKey: key }), {
      mode: 0o600,
    });
    await writeFile(join(home.home, "secrets.json"), JSON.stringify({ joinToken }), { mode: 0o600 });
    await chain.addCoordinator(account.address);
    const args = ["coordinator", "start", "--port", "0", "--chain-rpc-url", chain.rpcUrl, "--ledger", chain.ledger, "--settle-after", "0"];
    const env = { SHAREDLLM_HOME: home.home, ...(db.databaseUrl ? { DATABASE_URL: db.databaseUrl } : {}) };
    return { home, db, account, joinToken, args, env };
  }

  it("a coordinator killed between sending a settlement and recording it settles exactly once after a restart", async () => {
    const { home, db, account, joinToken, args: plain, env } = await coordinatorHome("sharedllm-settle-");
    const args = [...plain, "--verbose"];

    const first = startCli(args, { ...env, SHAREDLLM_FAILPOINT: "settlement.sent" });
    const url = await waitFor("the coordinator URL", () => /coordinator: (http:\/\/\S+)\/v1/.exec(first.out().stdout)?.[1], 60_000);
    const sim = new SimNode({ coordinatorUrl: url, joinToken, models: ["sim-model"] });
    await sim.start();
    cleanups.push(() => sim.stop());
    const user = devWallet(11);
    await chat(url, await paidKey(url, user, account.address));
    // the settler prepares batch 1, sends it, and dies before writing down that it did
    expect(await first.exited).toBe("SIGKILL");
    expect(first.out().stderr).not.toContain("settlement confirmed");
    expect((await chain.settlement(account.address)).lastBatch).toBe(1n);

    const second = startCli(args, env);
    await waitFor("the restarted coordinator to find batch 1 on chain", () => second.out().stderr.includes("already on chain"), 60_000);
    second.child.kill("SIGINT");
    expect(await second.exited).toBe(0);

    const events = await chain.batchEvents(account.address);
    expect(events).toHaveLength(1);
    expect((await chain.settlement(account.address)).lastBatch).toBe(1n);
    // the coordinator's own database: PostgreSQL when the suite runs on it, else PGlite in its home
    const store = await openDatabase({ databaseUrl: db.databaseUrl, dataDir: join(home.home, "db") });
    try {
      const batches = await store.selectFrom("settlements").select(["batch_id", "status", "tx_hash"]).execute();
      expect(batches).toEqual([{ batch_id: 1, status: "confirmed", tx_hash: events[0]?.transactionHash }]);
      const { charged } = await store
        .selectFrom("ledger_entries")
        .select(sql<string>`sum(amount)`.as("charged"))
        .where("address", "=", user.address.toLowerCase())
        .where("kind", "=", "charge")
        .executeTakeFirstOrThrow();
      expect(BigInt(charged)).toBe(JOB_COST);
      expect((await chain.escrow(user.address, account.address)).spent).toBe(JOB_COST);
    } finally {
      await store.destroy();
    }
  });

  it.skipIf(!process.env.DATABASE_URL)(
    "a replica settles only while no other holds the settler lock, and takes over once its holder is gone",
    async () => {
      const { default: pg } = await import("pg");
      const { coordinator, joinToken, account } = await ledgerCoordinator({ maxAgeMs: 0 }, { ownAccount: true });
      await honestNode(coordinator.url, joinToken);
      // another replica, mid-pass: a session of its own holds the lock
      const url = new URL(process.env.DATABASE_URL as string);
      url.pathname = `/${(await coordinator.db.selectNoFrom(sql<string>`current_database()`.as("name")).executeTakeFirstOrThrow()).name}`;
      const holder = new pg.Client({ connectionString: url.toString() });
      holder.on("error", () => undefined);
      await holder.connect();
      cleanups.push(() => holder.end().catch(() => undefined));
      await holder.query("select pg_advisory_lock(hashtext('sharedllm.settler'))");
      const user = devWallet(18);
      await chat(coordinator.url, await paidKey(coordinator.url, user, account.address));
      const settler = coordinator.ledger?.settler;
      // its passes find the lock taken and leave the work to the holder
      for (let i = 0; i < 3; i++) await settler?.tick();
      expect((await chain.settlement(account.address)).lastBatch).toBe(0n);
      // the holder dies (its connection with it): the next pass settles
      await holder.end();
      await waitFor("the batch on chain", async () => (await chain.settlement(account.address)).lastBatch === 1n, 30_000);
      expect((await chain.escrow(user.address, account.address)).spent).toBe(JOB_COST);
    },
  );

  it.skipIf(!process.env.DATABASE_URL)(
    "replicas on one PostgreSQL settle one at a time: each charge in one batch, once, and a replica carries on when another is killed",
    async () => {
      const { db, account, joinToken, args, env } = await coordinatorHome("sharedllm-replicas-");
      // two replicas of one coordinator (its key, its database), each with a node of its own
      const replicas = [startCli(args, env), startCli(args, env)];
      const urls: string[] = [];
      for (const r of replicas) {
        urls.push(await waitFor("a replica's URL", () => /coordinator: (http:\/\/\S+)\/v1/.exec(r.out().stdout)?.[1], 60_000));
      }
      for (const url of urls) {
        const sim = new SimNode({ coordinatorUrl: url, joinToken, models: ["sim-model"] });
        await sim.start();
        cleanups.push(() => sim.stop());
      }
      const users = [devWallet(16), devWallet(17)];
      const keys = [await paidKey(urls[0] as string, users[0] as LocalAccount, account.address), ""];
      keys[1] = await paidKey(urls[1] as string, users[1] as LocalAccount, account.address);
      const store = await openDatabase({ databaseUrl: db.databaseUrl, dataDir: "unused" });
      cleanups.push(() => store.destroy());
      const unsettled = async () => {
        const { rows } = await sql<{ n: string }>`
          select count(*) as n from ledger_entries e
          where e.kind = 'charge' and not exists (select 1 from batch_entries b where b.entry_id = e.id)`.execute(store);
        const open = await store.selectFrom("settlements").select("batch_id").where("status", "!=", "confirmed").execute();
        return Number(rows[0]?.n) + open.length;
      };
      // both replicas' settlers look every second while both users chat through both
      for (let round = 0; round < 3; round++) {
        for (const [i, url] of urls.entries()) await chat(url, keys[i] as string);
        for (const [i, url] of urls.entries()) await chat(url, keys[1 - i] as string);
      }
      await waitFor("every charge settled", async () => (await unsettled()) === 0, 60_000);
      // one replica is killed; the other settles what comes next
      const [gone, left] = replicas as [(typeof replicas)[0], (typeof replicas)[0]];
      process.kill(-(gone.child.pid as number), "SIGKILL");
      await gone.exited;
      for (const k of keys) await chat(urls[1] as string, k);
      await waitFor("the charges after the kill settled", async () => (await unsettled()) === 0, 60_000);

      const batches = await store.selectFrom("settlements").select(["batch_id", "status", "tx_hash"]).orderBy("batch_id").execute();
      const events = await chain.batchEvents(account.address);
      // one transaction per batch, each batch on chain once, none sent twice or skipped
      expect(events.map((e) => e.transactionHash)).toEqual(batches.map((b) => b.tx_hash));
      expect(batches.every((b) => b.status === "confirmed")).toBe(true);
      expect((await chain.settlement(account.address)).lastBatch).toBe(BigInt(batches.length));
      // 7 jobs per user, each charged once and posted once
      for (const user of users) expect((await chain.escrow(user.address, account.address)).spent).toBe(7n * JOB_COST);
      expect((await chain.settlement(account.address)).totalSpent).toBe(14n * JOB_COST);
      expect(left.out().stderr).not.toMatch(/settlement failed/);
      left.child.kill("SIGINT");
      expect(await left.exited).toBe(0);
    },
  );

  it("splits a batch whose users would not fit one transaction, and every user's spend lands on chain", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator({ maxAgeMs: 1_200_000, maxUsersPerBatch: 2 }, { ownAccount: true });
    const sim = new SimNode({ coordinatorUrl: coordinator.url, joinToken, models: ["sim-model"] });
    await sim.start();
    cleanups.push(() => sim.stop());
    const users = [devWallet(13), devWallet(14), devWallet(15)];
    for (const user of users) await chat(coordinator.url, await paidKey(coordinator.url, user, account.address));
    const settler = coordinator.ledger?.settler;
    await settler?.tick(true);
    await settler?.tick(true);
    const batches = await coordinator.db.selectFrom("settlements").select(["batch_id", "status", "payload"]).orderBy("batch_id").execute();
    expect(batches.map((b) => [b.batch_id, b.status, (JSON.parse(b.payload) as { users: string[] }).users.length])).toEqual([
      [1, "confirmed", 2],
      [2, "confirmed", 1],
    ]);
    for (const user of users) expect((await chain.escrow(user.address, account.address)).spent).toBe(JOB_COST);
    expect((await chain.settlement(account.address)).totalSpent).toBe(3n * JOB_COST);
  });

  it("replaces a settlement that is not mined in time with higher fees, and it lands once", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator(
      { maxAgeMs: 0, checkEveryMs: 100, stuckAfterMs: 1_000 },
      { ownAccount: true },
    );
    const sim = new SimNode({ coordinatorUrl: coordinator.url, joinToken, models: ["sim-model"] });
    await sim.start();
    cleanups.push(() => sim.stop());
    const key = await paidKey(coordinator.url, devWallet(12), account.address);
    await chain.test.setAutomine(false);
    cleanups.push(() => chain.test.setAutomine(true));
    await chat(coordinator.url, key);
    const sent = () => coordinator.db.selectFrom("settlements").select(["status", "tx_hash"]).where("batch_id", "=", 1).executeTakeFirst();
    const firstHash = (await waitFor("the settlement to be sent", async () => (await sent())?.tx_hash)) as `0x${string}`;
    const stuck = await chain.publicClient.getTransaction({ hash: firstHash });
    const replacement = await waitFor("a replacement", async () => {
      const h = (await sent())?.tx_hash;
      return h !== firstHash ? h : undefined;
    });
    await chain.test.mine({ blocks: 1 });
    await waitFor("the settlement to be confirmed", async () => (await sent())?.status === "confirmed");
    const events = await chain.batchEvents(account.address);
    expect(events).toHaveLength(1);
    expect(events[0]?.transactionHash).toBe(replacement);
    // the replacement used the stuck one's nonce with higher fees; the stuck one never made it into a block
    const replaced = await chain.publicClient.getTransaction({ hash: replacement as `0x${string}` });
    expect(replaced.nonce).toBe(stuck.nonce);
    expect(replaced.maxFeePerGas).toBeGreaterThan(stuck.maxFeePerGas as bigint);
    const original = await chain.publicClient.getTransaction({ hash: firstHash }).catch(() => undefined);
    expect(original?.blockNumber ?? null).toBeNull();
  });
});

describe("settlement that bad entries cannot stall", () => {
  const quick = { maxAgeMs: 1_200_000, checkEveryMs: 60_000 };

  it("sets aside a poisoned earning with its reason, settles the honest entries, and later batches keep going", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator(quick, { ownAccount: true });
    const settler = coordinator.ledger?.settler;
    const sim = await honestNode(coordinator.url, joinToken);
    const user = devWallet(17);
    const key = await paidKey(coordinator.url, user, account.address);
    await chat(coordinator.url, key);
    await waitFor("the honest receipt", async () => (await acceptedReceipts(coordinator.db)) === 1);
    // the poison: another node "earned" the whole job again, as two sock puppets at 10000 bps each did;
    // on the ledger, earnings above spend make settle() revert
    const { job_id } = await coordinator.db
      .selectFrom("ledger_entries")
      .select("job_id")
      .where("kind", "=", "earn")
      .executeTakeFirstOrThrow();
    const puppet = privateKeyToAccount(generatePrivateKey()).address.toLowerCase();
    const poison = await coordinator.db
      .insertInto("ledger_entries")
      .values({ address: puppet, kind: "earn", amount: JOB_COST, job_id })
      .returning("id")
      .executeTakeFirstOrThrow();

    await settler?.tick(true);
    expect(await chain.settlement(account.address)).toMatchObject({ lastBatch: 1n, totalSpent: JOB_COST, totalEarnings: JOB_COST });
    const aside = await coordinator.db.selectFrom("set_aside_entries").select(["entry_id", "reason"]).execute();
    expect(aside).toEqual([{ entry_id: poison.id, reason: `earnings on job ${job_id} would reach 14 credits, above its charge of 7` }]);
    // the honest node is paid; the puppet has nothing to claim
    const earned = await settler?.settledEarnings(sim.id as Address);
    expect(earned?.cumulative).toBe(JOB_COST);
    await send(user, "claim", [account.address, sim.id, earned?.cumulative, earned?.proof]);
    expect(await chain.credits(sim.id as Address)).toBe(JOB_COST);
    expect(await settler?.settledEarnings(puppet as Address)).toBeUndefined();
    // and its earnings view shows nothing pending, the set-aside amount apart
    const view = (await (await fetch(`${coordinator.url}/v1/earnings/${puppet}`)).json()) as Record<string, unknown>;
    expect(view).toMatchObject({ earned: "0", pending: "0", setAside: JOB_COST.toString(), byDay: [] });

    // later batches keep going
    await chat(coordinator.url, key);
    await waitFor("the second receipt", async () => (await acceptedReceipts(coordinator.db)) === 2);
    await settler?.tick(true);
    expect(await chain.settlement(account.address)).toMatchObject({
      lastBatch: 2n,
      totalSpent: 2n * JOB_COST,
      totalEarnings: 2n * JOB_COST,
    });
    expect(await coordinator.db.selectFrom("settlements").select("status").orderBy("batch_id").execute()).toEqual([
      { status: "confirmed" },
      { status: "confirmed" },
    ]);
  });

  it("a stored batch the ledger refuses (one made before this fix, carrying a poisoned earning) is dropped and planned again", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator(quick, { ownAccount: true });
    const settler = coordinator.ledger?.settler;
    const sim = await honestNode(coordinator.url, joinToken);
    const user = devWallet(26);
    await chat(coordinator.url, await paidKey(coordinator.url, user, account.address));
    await waitFor("the receipt", async () => (await acceptedReceipts(coordinator.db)) === 1);
    const { job_id } = await coordinator.db
      .selectFrom("ledger_entries")
      .select("job_id")
      .where("kind", "=", "earn")
      .executeTakeFirstOrThrow();
    const puppet = privateKeyToAccount(generatePrivateKey()).address.toLowerCase() as Address;
    await coordinator.db.insertInto("ledger_entries").values({ address: puppet, kind: "earn", amount: JOB_COST, job_id }).execute();
    // what the old settler stored: every entry up to the newest, earnings above spend; settle() reverts on it
    const taken = await coordinator.db.selectFrom("ledger_entries").select("id").where("kind", "in", ["charge", "earn"]).execute();
    const earnings = new Map([
      [sim.id as Address, JOB_COST],
      [puppet, JOB_COST],
    ]);
    const payload = {
      users: [user.address.toLowerCase()],
      spends: [String(JOB_COST)],
      earnings: Object.fromEntries([...earnings].map(([a, v]) => [a, String(v)])),
      root: earningsTree(earnings).root,
      totalEarnings: String(2n * JOB_COST),
    };
    await coordinator.db
      .insertInto("settlements")
      .values({ batch_id: 1, status: "prepared", max_entry_id: taken.at(-1)?.id as string, payload: JSON.stringify(payload) })
      .execute();
    await coordinator.db
      .insertInto("batch_entries")
      .values(taken.map((t) => ({ entry_id: t.id, batch_id: 1, job_key: null })))
      .execute();

    await settler?.tick(true);
    // the ledger refused it: it is dropped, and nothing went on chain
    expect(await coordinator.db.selectFrom("settlements").select("batch_id").execute()).toEqual([]);
    expect((await chain.settlement(account.address)).lastBatch).toBe(0n);
    await settler?.tick(true);
    expect(await chain.settlement(account.address)).toMatchObject({ lastBatch: 1n, totalSpent: JOB_COST, totalEarnings: JOB_COST });
    expect((await settler?.settledEarnings(sim.id as Address))?.cumulative).toBe(JOB_COST);
    expect(await coordinator.db.selectFrom("set_aside_entries").select("reason").execute()).toEqual([
      { reason: `earnings on job ${job_id} would reach 14 credits, above its charge of 7` },
    ]);
  });

  it("a user who withdraws before their spend is settled: the batch settles, nodes are paid what escrow covers, the shortfall is on chain", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator(quick, { ownAccount: true });
    const settler = coordinator.ledger?.settler;
    const sim = await honestNode(coordinator.url, joinToken);
    const [withdrawer, honest] = [devWallet(18), devWallet(19)];
    await chat(coordinator.url, await paidKey(coordinator.url, withdrawer, account.address));
    await chat(coordinator.url, await paidKey(coordinator.url, honest, account.address));
    await waitFor("both receipts", async () => (await acceptedReceipts(coordinator.db)) === 2);
    // the attack: announce a withdrawal of all the escrow, wait out the notice, take it before settlement
    await send(withdrawer, "requestWithdrawal", [account.address, 1_000n]);
    await chain.test.increaseTime({ seconds: 3600 });
    await chain.test.mine({ blocks: 1 });
    await send(withdrawer, "withdraw", [account.address]);
    expect(await chain.credits(withdrawer.address)).toBe(1_000n);

    await settler?.tick(true);
    // the batch settled: the honest user's spend in full, the withdrawer's recorded as their shortfall
    expect(await chain.settlement(account.address)).toMatchObject({ lastBatch: 1n, totalSpent: JOB_COST, totalEarnings: JOB_COST });
    expect((await chain.escrow(honest.address, account.address)).spent).toBe(JOB_COST);
    expect((await chain.escrow(withdrawer.address, account.address)).spent).toBe(0n);
    const shortfall = await chain.publicClient.readContract({
      address: chain.ledger,
      abi: CreditLedger.abi,
      functionName: "shortfall",
      args: [withdrawer.address, account.address],
    });
    expect(shortfall).toBe(JOB_COST);
    // the node is paid for the job that was paid for, not for the other
    expect((await settler?.settledEarnings(sim.id as Address))?.cumulative).toBe(JOB_COST);
    const reasons = (await coordinator.db.selectFrom("set_aside_entries").select("reason").orderBy("entry_id").execute()).map(
      (r) => r.reason,
    );
    expect(reasons).toHaveLength(2);
    expect(reasons[0]).toContain("withdrew before it was settled");
    expect(reasons[1]).toContain("was set aside (its user could not pay)");
  });

  it("refuses to start with a settle interval that cannot meet the withdrawal notice", async () => {
    await expect(ledgerCoordinator({ maxAgeMs: 3_600_000 })).rejects.toThrow(
      /users could withdraw before paying\. Settle at most every \d+ s/,
    );
  });

  it("a fresh database against a used ledger does not confirm batches it never sent", async () => {
    const first = await ledgerCoordinator(quick, { ownAccount: true });
    await honestNode(first.coordinator.url, first.joinToken);
    const key = await paidKey(first.coordinator.url, devWallet(20), first.account.address);
    await chat(first.coordinator.url, key);
    await waitFor("the receipt", async () => (await acceptedReceipts(first.coordinator.db)) === 1);
    await first.coordinator.ledger?.settler.tick(true);
    expect((await chain.settlement(first.account.address)).lastBatch).toBe(1n);

    // the same coordinator key with a new, empty database: its own batch 1 is not the chain's batch 1
    const second = await ledgerCoordinator(quick, { account: first.account });
    const sim = await honestNode(second.coordinator.url, second.joinToken);
    await chat(second.coordinator.url, await paidKey(second.coordinator.url, devWallet(21), first.account.address));
    await waitFor("the receipt", async () => (await acceptedReceipts(second.coordinator.db)) === 1);
    await second.coordinator.ledger?.settler.tick(true);
    expect(await second.coordinator.db.selectFrom("settlements").select(["batch_id", "status"]).execute()).toEqual([
      { batch_id: 1, status: "prepared" },
    ]);
    // nothing was confirmed: the node gets no proof against a root this database never posted
    expect(await second.coordinator.ledger?.settler.settledEarnings(sim.id as Address)).toBeUndefined();
    expect(await chain.batchEvents(first.account.address)).toHaveLength(1);
  });

  it.skipIf(!process.env.DATABASE_URL)("on PostgreSQL, a charge committed after a later one still goes into the next batch", async () => {
    const { coordinator, account } = await ledgerCoordinator(quick, { ownAccount: true });
    const settler = coordinator.ledger?.settler;
    const user = devWallet(22).address.toLowerCase();
    await chain.fund(devWallet(22).address);
    await chain.deposit(devWallet(22), 1_000n, account.address);
    // charge A takes its id first but commits last; charge B commits in between, and a batch is made then
    let commitA: () => void = () => {};
    const gate = new Promise<void>((r) => {
      commitA = r;
    });
    let inserted: () => void = () => {};
    const aInserted = new Promise<void>((r) => {
      inserted = r;
    });
    const a = coordinator.db.transaction().execute(async (tx) => {
      await tx.insertInto("ledger_entries").values({ address: user, kind: "charge", amount: 11n, job_id: "job-a" }).execute();
      inserted();
      await gate;
    });
    await aInserted;
    await coordinator.db.insertInto("ledger_entries").values({ address: user, kind: "charge", amount: 13n, job_id: "job-b" }).execute();
    await settler?.tick(true);
    expect((await chain.escrow(devWallet(22).address, account.address)).spent).toBe(13n);
    commitA();
    await a;
    await settler?.tick(true);
    expect((await chain.escrow(devWallet(22).address, account.address)).spent).toBe(24n);
    expect((await chain.settlement(account.address)).lastBatch).toBe(2n);
  });

  it("keeps every batch within the cap governance sets through the timelock", async () => {
    const { coordinator, joinToken, account } = await ledgerCoordinator(quick, { ownAccount: true });
    await honestNode(coordinator.url, joinToken);
    const users = [devWallet(23), devWallet(24), devWallet(25)];
    for (const user of users) await chat(coordinator.url, await paidKey(coordinator.url, user, account.address));
    await waitFor("three receipts", async () => (await acceptedReceipts(coordinator.db)) === 3);
    const deployer = privateKeyToAccount(DEV_DEPLOYER_KEY);
    const govern = async (cap: bigint) => {
      const call = governanceCall(chain.ledger, CreditLedger.abi, "setMaxBatchSpend", [cap], `cap ${cap} ${Date.now()}`);
      await send(deployer, "schedule", scheduleArgs(call, DEV_TIMELOCK_DELAY_S), chain.governance, TimelockController.abi);
      await chain.test.increaseTime({ seconds: Number(DEV_TIMELOCK_DELAY_S) });
      await chain.test.mine({ blocks: 1 });
      await send(deployer, "execute", executeArgs(call), chain.governance, TimelockController.abi);
    };
    const cap = await chain.publicClient.readContract({ address: chain.ledger, abi: CreditLedger.abi, functionName: "maxBatchSpend" });
    await govern(10n);
    cleanups.push(() => govern(cap));
    const settler = coordinator.ledger?.settler;
    for (let i = 0; i < 3; i++) await settler?.tick(true);
    const events = await chain.batchEvents(account.address);
    expect(events.map((e) => e.args.batchSpent)).toEqual([JOB_COST, JOB_COST, JOB_COST]);
    for (const user of users) expect((await chain.escrow(user.address, account.address)).spent).toBe(JOB_COST);
  });
});
