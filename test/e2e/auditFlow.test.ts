/**
 * The audit flow against nodes that speak the real control protocol (docs/verification.md), on a
 * real chain and coordinator: a node cannot tell an audited job from another; only a trusted
 * auditor gets audits; an auditor that fails or goes away never costs the audited node anything
 * (its earnings wait, then settle); a failed audit forfeits the node's earnings of the window and
 * the receipts it has not signed yet. (The scores here are the test auditor's; the real auditor
 * and real cheats are in audits.test.ts.)
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import type { AuditScore, AuditStart, CoordinatorFrame, EarningsResponse, JobStart, NodeFrame, ReceiptRequest } from "@sharedllm/protocol";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { SimNode, signsReceipts, streamWords } from "../simNode.ts";

const joinToken = randomBytes(32).toString("base64url");
const MODEL = "m-audit";
/** the auditor serves the same model file under another name, so that the jobs go to the nodes under audit */
const AUDITOR_MODEL = "m-audit-auditor";
const SHA = "cd".repeat(32);
const WINDOW_MS = 1_500;

let chain: TestChain;
let database: TestDatabase;
let coordinator: Coordinator;
let apiKey: string;
const nodes: SimNode[] = [];
/** what the test auditor answers: scores for each position, an error, or nothing */
let auditorAnswer: (a: AuditStart) => "pass" | "fail" | "error" | "silent" = () => "pass";
const auditsSeen: { by: string; frame: AuditStart }[] = [];
const auditorAccount = privateKeyToAccount(generatePrivateKey());
/** audit.start frames are only for trusted auditors: a node that says it audits but is not trusted gets none */
const untrustedAccount = privateKeyToAccount(generatePrivateKey());
/** draws for the audit decision: each paid job takes the next (below the rate: audited) */
const draws: number[] = [];

function score(position: number, claimed: number, pass: boolean): AuditScore {
  return pass
    ? { position, rank: 1, logprob: -0.1, top: claimed, topLogprob: -0.1, floorLogprob: -9 }
    : { position, rank: null, logprob: null, top: claimed + 1, topLogprob: -0.1, floorLogprob: -9 };
}

async function sim(o: Partial<ConstructorParameters<typeof SimNode>[0]>, model = MODEL, at = coordinator): Promise<SimNode> {
  const n = new SimNode({
    coordinatorUrl: at.url,
    joinToken,
    served: [{ id: model, sha256: SHA, contextSize: 2048 }],
    models: [model],
    slots: 1,
    ...o,
  });
  await n.start();
  nodes.push(n);
  return n;
}

/** A node that says it audits: answers each audit.start as `auditorAnswer` says. */
function auditor(account: typeof auditorAccount, at = coordinator): Promise<SimNode> {
  const n: { node?: SimNode } = {};
  return sim(
    {
      account,
      hello: { auditor: true },
      onJob: (job, send) => streamWords(job, send, ["fine"], { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 }),
      onReceiptRequest: signsReceipts(account),
      onFrame: (frame: CoordinatorFrame, send: (f: NodeFrame) => void) => {
        if (frame.type !== "audit.start") return;
        auditsSeen.push({ by: account.address.toLowerCase(), frame });
        const answer = auditorAnswer(frame);
        if (answer === "silent") return void n.node?.stop();
        if (answer === "error") return send({ type: "audit.error", auditId: frame.auditId, message: "engine busy" });
        send({
          type: "audit.result",
          auditId: frame.auditId,
          promptTokens: 3,
          scores: frame.positions.map((p) => score(p, frame.claimed[p] as number, answer === "pass")),
        });
      },
    },
    AUDITOR_MODEL,
    at,
  ).then((node) => {
    n.node = node;
    return node;
  });
}

function chat(content: string): Promise<Response> {
  return fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, max_tokens: 16, temperature: 0, messages: [{ role: "user", content }] }),
  });
}

/** Each test's nodes leave before the next test's serve its jobs. */
async function gone(...leaving: SimNode[]): Promise<void> {
  for (const n of leaving) n.stop();
  await waitFor("the nodes gone", () => leaving.every((n) => !coordinator.fleet.get(n.id)));
}

async function earnings(node: string): Promise<EarningsResponse> {
  return (await (await fetch(`${coordinator.url}/v1/earnings/${node}`)).json()) as EarningsResponse;
}

async function auditsOf(node: string) {
  return coordinator.db.selectFrom("audits").selectAll().where("node_id", "=", node).orderBy("created_at").execute();
}

beforeAll(async () => {
  chain = await startTestChain();
  database = await testDatabase();
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    ledger: {
      ...chain.ledgerOptions(),
      audits: {
        auditors: [auditorAccount.address],
        windowMs: WINDOW_MS,
        newRate: 0.5,
        excludeAfter: 99,
        random: () => draws.shift() ?? 0,
        canaryEveryMs: 0,
      },
    },
  });
  const wallet = devWallet(15);
  await chain.deposit(wallet, 1_000_000n);
  apiKey = await createKey(coordinator.url, await signIn(coordinator.url, wallet, chain.chainId));
  await auditor(auditorAccount);
}, 120_000);

afterAll(async () => {
  for (const n of nodes) n.stop();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
});

describe("the audit flow", () => {
  it("a node gets the same frames for audited and unaudited jobs; only the trusted auditor is asked", async () => {
    const untrusted = await auditor(untrustedAccount);
    const frames: CoordinatorFrame[] = [];
    const served = await sim({
      onJob: (job, send) => {
        frames.push(job);
        streamWords(job, send, ["one", " two", " three"], { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
      },
      onReceiptRequest: (req, send) => {
        frames.push(req);
        signsReceipts(served.account)(req, send);
      },
      onFrame: (f) => frames.push(f),
    });
    draws.push(0.9, 0.1, 0.9, 0.1);
    for (const content of ["a", "b", "c", "d"]) expect((await chat(content)).status).toBe(200);
    const audited = await waitFor("two audits passed", async () => {
      const rows = await auditsOf(served.id);
      return rows.length === 2 && rows.every((r) => r.status === "passed") ? rows : undefined;
    });
    const jobs = frames.filter((f): f is JobStart => f.type === "job.start");
    expect(jobs).toHaveLength(4);
    const auditedIds = new Set(audited.map((a) => a.job_id));
    expect(jobs.filter((j) => auditedIds.has(j.jobId))).toHaveLength(2);
    // the same shape: the same fields, the same request fields, nothing else sent to the node
    const shape = (j: JobStart) => JSON.stringify({ frame: Object.keys(j).sort(), request: Object.keys(j.request).sort() });
    expect(new Set(jobs.map(shape)).size).toBe(1);
    expect(new Set(frames.map((f) => f.type))).toEqual(new Set(["job.start", "receipt.request"]));
    // only the trusted auditor was asked
    expect(auditsSeen.map((a) => a.by)).toEqual([auditorAccount.address.toLowerCase(), auditorAccount.address.toLowerCase()]);
    // it ran the job's own request on its own name for the same model file
    expect(auditsSeen[0]?.frame.request).toMatchObject({
      model: AUDITOR_MODEL,
      messages: [{ role: "user", content: "b" }],
      temperature: 0,
    });
    await gone(untrusted, served);
  }, 60_000);

  it("an auditor's errors and its going away never count against the node: its earnings wait, then settle", async () => {
    const served = await sim({
      onJob: (job, send) => streamWords(job, send, ["x", " y"], { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }),
      onReceiptRequest: (req, send) => signsReceipts(served.account)(req, send),
    });
    // errors every time: handed back, then given up (void), never failed
    auditorAnswer = () => "error";
    draws.push(0.1);
    expect((await chat("e")).status).toBe(200);
    const voided = await waitFor("the audit given up", async () => (await auditsOf(served.id)).find((a) => a.status === "void"));
    expect(voided.attempts).toBe(5);
    // goes away mid-audit: handed back, and run by the auditor when it is back
    auditorAnswer = () => "silent";
    draws.push(0.1);
    expect((await chat("f")).status).toBe(200);
    await waitFor("the auditor gone", () => !coordinator.fleet.get(auditorAccount.address.toLowerCase()));
    await waitFor("the audit handed back", async () => (await auditsOf(served.id)).some((a) => a.status === "queued"));
    // held: an open audit keeps the node's earnings out of settlement, past the window
    const waiting = await waitFor("both receipts signed", async () => {
      const e = await earnings(served.id);
      return e.served.jobs === 2 ? e : undefined;
    });
    expect(BigInt(waiting.settled)).toBe(0n);
    auditorAnswer = () => "pass";
    await auditor(auditorAccount);
    await waitFor("the audit passed", async () => (await auditsOf(served.id)).some((a) => a.status === "passed"));
    const paid = await waitFor("its earnings settled", async () => {
      const e = await earnings(served.id);
      return BigInt(e.settled) === BigInt(e.earned) ? e : undefined;
    });
    expect(paid.audits).toMatchObject({ passed: 1, failed: 0, suspicion: 0, excluded: null });
    expect(BigInt(paid.setAside)).toBe(0n);
    await gone(served);
  }, 60_000);

  it("a failed audit forfeits the node's earnings of the window and the receipts it has not signed yet", async () => {
    const unsigned: ReceiptRequest[] = [];
    let signed = 0;
    const served = await sim({
      onJob: (job, send) => streamWords(job, send, ["p", " q"], { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }),
      // signs its first two receipts at once, keeps the third back
      onReceiptRequest: (req, send) => {
        if (signed++ < 2) signsReceipts(served.account)(req, send);
        else unsigned.push(req);
      },
    });
    auditorAnswer = () => "fail";
    draws.push(0.9, 0.9, 0.1);
    for (const content of ["g", "h", "i"]) expect((await chat(content)).status).toBe(200);
    const failed = await waitFor("the audit failed", async () => (await auditsOf(served.id)).find((a) => a.status === "failed"));
    expect(failed.reason).toMatch(/position/);
    // the two signed earnings are set aside as forfeited, with the reason
    const entries = await coordinator.db
      .selectFrom("ledger_entries as e")
      .leftJoin("set_aside_entries as a", "a.entry_id", "e.id")
      .select(["e.amount", "a.reason"])
      .where("e.address", "=", served.id)
      .where("e.kind", "=", "earn")
      .execute();
    expect(entries).toHaveLength(2);
    for (const e of entries) expect(e.reason).toMatch(new RegExp(`^forfeited: audit ${failed.id} failed`));
    // the receipt it kept back is no longer asked for: signing it now earns nothing
    expect(unsigned).toHaveLength(1);
    signsReceipts(served.account)(unsigned[0] as ReceiptRequest, (f) => served.send(f));
    await waitFor("the late receipt rejected", async () =>
      coordinator.db
        .selectFrom("receipts")
        .select("reason")
        .where("node_address", "=", served.id)
        .where("status", "=", "rejected")
        .executeTakeFirst(),
    );
    const e = await earnings(served.id);
    expect(e.audits).toMatchObject({ passed: 0, failed: 1, suspicion: 1 });
    expect(BigInt(e.earned)).toBe(0n);
    expect(BigInt(e.setAside)).toBeGreaterThan(0n);
  }, 60_000);

  it("an idle new node gets canary jobs of the coordinator's own: ordinary frames, not charged, always audited", async () => {
    // a coordinator of its own, sending canaries often
    const account = privateKeyToAccount(generatePrivateKey());
    await chain.addCoordinator(account.address);
    const db = await testDatabase();
    const own = await startCoordinator({
      host: "127.0.0.1",
      port: 0,
      ...db,
      joinToken,
      logger: quietLogger(),
      ledger: {
        chain: { rpcUrl: chain.rpcUrl, ledger: chain.ledger, account },
        audits: { auditors: [auditorAccount.address], windowMs: WINDOW_MS, canaryEveryMs: 200 },
      },
    });
    try {
      auditorAnswer = () => "pass";
      const seen: JobStart[] = [];
      const node = await sim(
        {
          onJob: (job, send) => {
            seen.push(job);
            streamWords(job, send, ["sun", " and", " rain"], { prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
          },
        },
        MODEL,
        own,
      );
      await auditor(auditorAccount, own);
      const canary = await waitFor("a canary audited", async () =>
        own.db
          .selectFrom("audits")
          .selectAll()
          .where("node_id", "=", node.id)
          .where("canary", "=", true)
          .where("status", "=", "passed")
          .executeTakeFirst(),
      );
      expect(canary.canary).toBe(true);
      // an ordinary chat request: the fields a user's greedy chat has
      expect(seen[0]?.request).toMatchObject({ model: MODEL, temperature: 0, messages: [{ role: "user" }] });
      expect(Object.keys(seen[0] ?? {}).sort()).toEqual(["includeUsage", "jobId", "kind", "request", "stream", "type"]);
      // not charged: no credit moved, no receipt asked for
      expect(await own.db.selectFrom("ledger_entries").select("id").execute()).toEqual([]);
      expect(await own.db.selectFrom("receipt_proposals").select("job_id").execute()).toEqual([]);
    } finally {
      await own.close();
      await db.cleanup();
    }
  }, 60_000);
});
