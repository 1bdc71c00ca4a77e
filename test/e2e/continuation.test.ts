/**
 * A stream that survives its node (docs/continuation.md), on real parts: a coordinator with the
 * real contracts on a dev chain, and three real `sharedllm node start` daemons (llama-server on
 * the default model), each its own process group. The node serving a request is SIGKILLed
 * mid-generation; the job continues on another node, and the client sees what an uninterrupted
 * run gives it: the same text at temperature 0, one usage, one charge; each node that produced
 * part of it has a receipt proposal for its tokens. A node whose engine freezes mid-stream (its
 * connection open) is taken for failed after the stall bound, and the job continues too. With no
 * node left, the client gets the clean error and is charged nothing.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { receiptJobId, type Usage } from "@sharedllm/protocol";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { type NodeProcess, startNodeProcess } from "../nodeProcess.ts";
import { MODEL } from "../system.ts";

const joinToken = randomBytes(32).toString("base64url");
const CONTINUE_WAIT_MS = 3_000;
/**
 * The stall bound: well above a continuing node's pause to re-read the output so far on a busy
 * 2-core machine (at 2 s, a continuing node starved of CPU was itself taken for stalled)
 */
const STALL_MS = 4_000;

let chain: TestChain;
let database: TestDatabase;
let coordinator: Coordinator;
let apiKey: string;
let payer: string;
/** the node daemons by node id */
const daemons = new Map<string, NodeProcess>();
/** those killed, their homes still to remove */
const gone: NodeProcess[] = [];

async function startDaemon(): Promise<void> {
  const d = await startNodeProcess({ coordinatorUrl: coordinator.url, joinToken, args: ["--slots", "1", "--no-owner-first"] });
  daemons.set(d.id, d);
}

/** Kills a node as a power cut would: its process group, llama-server with it. */
function kill(nodeId: string): void {
  const daemon = daemons.get(nodeId);
  if (!daemon) throw new Error(`no daemon for ${nodeId}`);
  void daemon.kill();
  daemons.delete(nodeId);
  gone.push(daemon);
}

const REQUEST = {
  model: MODEL,
  messages: [{ role: "user", content: "Write a short story about a lighthouse keeper and a storm." }],
  max_tokens: 120,
  temperature: 0,
};

function chat(body: Record<string, unknown>): Promise<Response> {
  return fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ ...REQUEST, ...body }),
  });
}

/** A streamed chat read event by event; `onEvent` sees each event's count so far. */
async function streamed(res: Response, onEvent: (n: number) => void = () => {}) {
  expect(res.status).toBe(200);
  let text = "";
  let usage: Usage | undefined;
  let error: unknown;
  let raw = "";
  let n = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    raw += Buffer.from(chunk).toString();
    let cut = raw.indexOf("\n\n");
    while (cut >= 0) {
      const data = raw.slice(0, cut).replace(/^data: /, "");
      raw = raw.slice(cut + 2);
      cut = raw.indexOf("\n\n");
      if (data === "[DONE]") continue;
      const event = JSON.parse(data) as { choices?: { delta?: { content?: string | null } }[]; usage?: Usage; error?: unknown };
      if (event.error) error = event.error;
      if (event.usage) usage = event.usage;
      text += event.choices?.[0]?.delta?.content ?? "";
      onEvent(++n);
    }
  }
  return { text, usage, error, node: res.headers.get("x-sharedllm-node") as string };
}

async function charged(): Promise<bigint> {
  const row = await coordinator.db
    .selectFrom("ledger_entries")
    .select(sql<string | null>`sum(amount)`.as("total"))
    .where("address", "=", payer)
    .where("kind", "=", "charge")
    .executeTakeFirstOrThrow();
  return BigInt(row.total ?? 0);
}

const seenJobs = new Set<string>();

/** The job run since the last call (its row and status), and the receipts proposed for it: node -> completion tokens. */
async function nextJob() {
  const job = await waitFor("the job's row", async () => {
    const rows = await coordinator.db.selectFrom("jobs").select(["id", "status"]).execute();
    return rows.find((r) => !seenJobs.has(r.id));
  });
  for (const r of await coordinator.db.selectFrom("jobs").select("id").execute()) seenJobs.add(r.id);
  // proposed to each node: still waiting for its signature, or signed and accepted already
  const jobKey = receiptJobId(job.id);
  const rows = [
    ...(await coordinator.db.selectFrom("receipt_proposals").select(["node_address", "receipt"]).where("job_id", "=", jobKey).execute()),
    ...(await coordinator.db
      .selectFrom("receipts")
      .select(["node_address", "receipt"])
      .where("job_id", "=", jobKey)
      .where("status", "=", "accepted")
      .execute()),
  ];
  const receipts = new Map(rows.map((r) => [r.node_address, (JSON.parse(r.receipt) as { completionTokens: number }).completionTokens]));
  return { ...job, receipts };
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
    ledger: chain.ledgerOptions(),
    continueWaitMs: CONTINUE_WAIT_MS,
    stallMs: STALL_MS,
  });
  const wallet = devWallet(13);
  payer = wallet.address.toLowerCase();
  await chain.deposit(wallet, 10_000_000n);
  apiKey = await createKey(coordinator.url, await signIn(coordinator.url, wallet, chain.chainId));
  await Promise.all([startDaemon(), startDaemon(), startDaemon(), startDaemon()]);
  await waitFor("four nodes online", () => coordinator.fleet.list().filter((n) => n.accepting).length === 4, 30_000);
}, 300_000);

afterAll(async () => {
  for (const d of gone) await d.cleanup();
  for (const d of daemons.values()) await d.cleanup();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
});

describe("a job whose node dies mid-generation", () => {
  let reference: { text: string; usage: Usage; cost: bigint };

  beforeAll(async () => {
    const before = await charged();
    const uninterrupted = await streamed(await chat({ stream: true, stream_options: { include_usage: true } }));
    const { prompt_tokens, completion_tokens, total_tokens } = uninterrupted.usage as Usage;
    reference = { text: uninterrupted.text, usage: { prompt_tokens, completion_tokens, total_tokens }, cost: (await charged()) - before };
    await nextJob();
    // long enough to be cut twice over
    expect(uninterrupted.usage?.completion_tokens).toBeGreaterThan(60);
  }, 60_000);

  it("streamed: continues on another node; the client's one stream equals the uninterrupted one, charged once", async () => {
    const before = await charged();
    const res = await chat({ stream: true, stream_options: { include_usage: true } });
    const first = res.headers.get("x-sharedllm-node") as string;
    const got = await streamed(res, (n) => {
      if (n === 30) kill(first);
    });
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(reference.text);
    expect(got.usage).toMatchObject(reference.usage);
    expect((await charged()) - before).toBe(reference.cost);
    const job = await nextJob();
    expect(job.status).toBe("completed");
    // the first node streamed at least the 29 tokens the client saw (the first event names the role), the other the rest
    const total = reference.usage.completion_tokens;
    expect(job.receipts.size).toBe(2);
    expect(job.receipts.get(first)).toBeGreaterThanOrEqual(29);
    expect([...job.receipts.values()].reduce((a, b) => a + b, 0)).toBe(total);
    const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
    expect(metrics).toMatch(/sharedllm_continuations_total\{cause="node_lost"\} 1/);
  }, 120_000);

  it("whole response: continues too; the body equals the uninterrupted one", async () => {
    const before = await charged();
    const pending = chat({ stream: false });
    const serving = await waitFor("the job dispatched", () => coordinator.fleet.list().find((n) => n.active > 0)?.id);
    // generation is under way once its engine has worked a while past the prompt
    const engine = () => (daemons.get(serving) as NodeProcess).engine();
    const t0 = (await engine()).ticks;
    await waitFor("tokens generated", async () => (await engine()).ticks - t0 > 60, 30_000, 20);
    kill(serving);
    const res = await pending;
    expect(res.status).toBe(200);
    const body = (await res.json()) as { choices: { message: { content: string } }[]; usage: Usage };
    expect(body.choices[0]?.message.content).toBe(reference.text);
    expect(body.usage).toMatchObject(reference.usage);
    expect((await charged()) - before).toBe(reference.cost);
    const job = await nextJob();
    expect(job.receipts.size).toBe(2);
    expect([...job.receipts.values()].reduce((a, b) => a + b, 0)).toBe(reference.usage.completion_tokens);
  }, 120_000);

  it("a node whose engine freezes mid-stream is taken for failed after the stall bound: the stream goes on elsewhere", async () => {
    const res = await chat({ stream: true });
    const first = res.headers.get("x-sharedllm-node") as string;
    const { pid: engine } = await (daemons.get(first) as NodeProcess).engine();
    let frozenAt = 0;
    const got = await streamed(res, (n) => {
      if (n === 20) {
        process.kill(engine, "SIGSTOP");
        frozenAt = performance.now();
      }
    });
    const tookMs = performance.now() - frozenAt;
    kill(first);
    expect(got.error).toBeUndefined();
    expect(got.text).toBe(reference.text);
    expect(tookMs).toBeGreaterThan(STALL_MS);
    const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
    expect(metrics).toMatch(/sharedllm_continuations_total\{cause="stalled"\} 1/);
    expect((await nextJob()).status).toBe("completed");
  }, 60_000);

  it("no node left to continue it: the stream ends with the clean error within the bound, and nothing is charged", async () => {
    expect(daemons.size).toBe(1);
    const before = await charged();
    const res = await chat({ stream: true });
    const only = res.headers.get("x-sharedllm-node") as string;
    let killedAt = 0;
    const got = await streamed(res, (n) => {
      if (n === 10) {
        kill(only);
        killedAt = performance.now();
      }
    });
    expect(performance.now() - killedAt).toBeLessThan(CONTINUE_WAIT_MS + 3_000);
    expect(got.error).toMatchObject({ code: "node_failed" });
    expect(await charged()).toBe(before);
    expect((await nextJob()).status).toBe("failed");
  }, 60_000);
});
