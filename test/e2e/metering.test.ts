/**
 * Metering against hostile requests and hostile nodes, on a real chain and a real coordinator with
 * nodes that speak the real control protocol: a user cannot raise the generation limit past what
 * their hold covers, and a node's own figures cannot charge a user more than the coordinator can
 * bound, nor strand a hold, nor make requests unaffordable.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { registerNode } from "@sharedllm/node";
import { CONTROL_PATH, CONTROL_PROTOCOL_VERSION, type JobStart, type Usage } from "@sharedllm/protocol";
import { sql } from "kysely";
import type { Address } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { type SimJobHandler, SimNode, signsReceipts, streamWords } from "../simNode.ts";

let chain: TestChain;
let database: TestDatabase;
let coordinator: Coordinator;
const joinToken = randomBytes(32).toString("base64url");
const nodes: SimNode[] = [];

const start = async () => {
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    ledger: chain.ledgerOptions(),
  });
};

beforeAll(async () => {
  chain = await startTestChain();
  database = await testDatabase();
  await start();
}, 120_000);

afterAll(async () => {
  for (const n of nodes) n.stop();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
});

async function node(model: string, onJob: SimJobHandler, contextSize = 2048, more: Partial<ConstructorParameters<typeof SimNode>[0]> = {}) {
  const n = new SimNode({
    coordinatorUrl: coordinator.url,
    joinToken,
    served: [{ id: model, sha256: "ab".repeat(32), contextSize }],
    models: [model],
    onJob,
    ...more,
  });
  await n.start();
  nodes.push(n);
  return n;
}

/** A wallet with `credits` in escrow and an API key; its journal and account as the coordinator sees them. */
async function payer(index: number, credits: bigint) {
  const wallet = devWallet(index);
  await chain.deposit(wallet, credits);
  const session = await signIn(coordinator.url, wallet, chain.chainId);
  const key = await createKey(coordinator.url, session);
  const journal = async (kind: string) => {
    const row = await coordinator.db
      .selectFrom("ledger_entries")
      .select(sql<string | null>`sum(amount)`.as("total"))
      .where("address", "=", wallet.address.toLowerCase())
      .where("kind", "=", kind as never)
      .executeTakeFirstOrThrow();
    return BigInt(row.total ?? 0);
  };
  const account = async () =>
    (await (await fetch(`${coordinator.url}/v1/account`, { headers: { authorization: `Bearer ${session}` } })).json()) as {
      available: string;
      held: string;
      charged: string;
    };
  const chat = (body: Record<string, unknown>) =>
    fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Say hi." }], ...body }),
    });
  return { address: wallet.address as Address, journal, account, chat };
}

describe("metering against hostile requests and nodes", () => {
  it("the engine gets only allow-listed fields and the generation limit the hold covers, whatever the user adds", async () => {
    const seen: JobStart[] = [];
    await node("m-fields", (job, send) => {
      seen.push(job);
      streamWords(job, send, ["hi"], { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 });
    });
    const user = await payer(10, 100_000n);
    const res = await user.chat({
      model: "m-fields",
      stream: true,
      max_tokens: 4,
      // llama-server's own limit and batch fields, which would outrun the hold, and another user's cache slot
      n_predict: 8010,
      n_cmpl: 3,
      id_slot: 0,
      ignore_eos: true,
      top_k: 40,
    });
    expect(res.status).toBe(200);
    await res.text();
    const request = seen[0]?.request ?? {};
    expect(request).toMatchObject({ max_tokens: 4, n_predict: 4, top_k: 40 });
    for (const field of ["n_cmpl", "id_slot", "ignore_eos", "user"]) expect(request).not.toHaveProperty(field);

    // without max_tokens the coordinator's default limit is forwarded and held for, not the node's context
    seen.length = 0;
    await (await user.chat({ model: "m-fields" })).text();
    expect(seen[0]?.request).toMatchObject({ max_tokens: 4096, n_predict: 4096 });
  });

  it("a node that reports more tokens than it relayed is charged what the coordinator counted", async () => {
    await node("m-inflate", (job, send) =>
      streamWords(job, send, ["two", " words"], { prompt_tokens: 900_000, completion_tokens: 900_000, total_tokens: 1_800_000 }),
    );
    const user = await payer(11, 1_000_000n);
    const res = await user.chat({ model: "m-inflate", stream: true, max_tokens: 2000, stream_options: { include_usage: true } });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toContain("[DONE]");
    // the stream's usage is what the user is charged, not the node's word
    const usage = text
      .split("\n\n")
      .map((e) => e.replace(/^data: /, ""))
      .filter((e) => e.startsWith("{"))
      .map((e) => JSON.parse(e) as { usage?: Usage })
      .find((e) => e.usage)?.usage;
    expect(usage?.completion_tokens).toBe(3);
    const charged = await user.journal("charge");
    // prompt: at most the request's bytes plus the template margin; completion: the tokens the
    // coordinator counted in the stream (2) and one end token, whatever the node reports
    const body = JSON.stringify([{ role: "user", content: "Say hi." }]);
    const promptBound = BigInt(Buffer.byteLength(body) + 16 + 64);
    expect(charged).toBe(promptBound + 2n * 3n);
    expect(await user.account()).toMatchObject({ held: "0", charged: charged.toString() });
    const job = await coordinator.db
      .selectFrom("jobs")
      .select(["completion_tokens"])
      .where("model", "=", "m-inflate")
      .executeTakeFirstOrThrow();
    expect(job.completion_tokens).toBe(3);
  });

  it("malformed usage in a response is the node's failure: the job goes to another node, the hold is released", async () => {
    // usage that is not whole token counts: the frame is refused, and the node with it
    const bad = await node("m-usage", (job, send) =>
      send({ type: "job.end", jobId: job.jobId, usage: { prompt_tokens: 1.5, completion_tokens: 1 } as Usage }),
    );
    const user = await payer(12, 100_000n);
    // only the lying node serves it: the client gets 502 and keeps its credits
    const failed = await user.chat({ model: "m-usage", max_tokens: 8 });
    expect(failed.status).toBe(502);
    expect(((await failed.json()) as { error: { code: string } }).error.code).toBe("node_failed");
    expect(bad.jobsSeen).toBe(1);
    expect(await user.account()).toMatchObject({ held: "0", charged: "0", available: "100000" });

    // an honest node joins: the retry lands there and the user is charged its (bounded) usage once
    await node("m-usage", (job, send) => streamWords(job, send, ["hi"], { prompt_tokens: 7, completion_tokens: 1, total_tokens: 8 }));
    const ok = await user.chat({ model: "m-usage", max_tokens: 8 });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { usage: Usage }).usage).toEqual({ prompt_tokens: 7, completion_tokens: 1, total_tokens: 8 });
    expect(await user.account()).toMatchObject({ held: "0", charged: "9" });
  });

  it("a node claiming a huge context is refused, and cannot make requests without max_tokens unaffordable", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    const { sessionToken } = await registerNode({ coordinatorUrl: coordinator.url, joinToken, account });
    const ws = new WebSocket(coordinator.url.replace(/^http/, "ws") + CONTROL_PATH, {
      headers: { authorization: `Bearer ${sessionToken}` },
    });
    const closed = new Promise<{ code: number; reason: string }>((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: String(reason) })),
    );
    ws.once("open", () =>
      ws.send(
        JSON.stringify({
          type: "hello",
          protocol: CONTROL_PROTOCOL_VERSION,
          nodeId: account.address,
          engine: { tag: "sim", variant: "cpu" },
          models: [{ id: "m-context", sha256: "cd".repeat(32), contextSize: 1e12 }],
          slots: 1,
        }),
      ),
    );
    const { code, reason } = await closed;
    expect(code).toBe(4001);
    expect(reason).toContain("malformed frame");
    expect(coordinator.fleet.servesModel("m-context")).toBe(false);

    // the largest context a node may claim changes nothing for a user with an ordinary balance
    await node(
      "m-context",
      (job, send) => streamWords(job, send, ["ok"], { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 }),
      1 << 20,
    );
    const user = await payer(13, 10_000n);
    const res = await user.chat({ model: "m-context", stream: true });
    expect(res.status).toBe(200);
    await res.text();
    expect(await user.account()).toMatchObject({ held: "0" });
  });

  it("a receipt proposal outlives a coordinator restart: the node gets it again when it reconnects, and is paid", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    const answer = (o: { sign: boolean }) => (o.sign ? signsReceipts(account) : () => {});
    const reply: SimJobHandler = (job, send) =>
      streamWords(job, send, ["paid"], { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 });
    // the node goes away before it signs
    const away = await node("m-restart", reply, 2048, { account, onReceiptRequest: answer({ sign: false }) });
    const user = await payer(14, 100_000n);
    await (await user.chat({ model: "m-restart", stream: true, max_tokens: 4 })).text();
    const charged = await user.journal("charge");
    expect(charged).toBe(7n);
    away.stop();
    await coordinator.close();
    await start();
    // the same node comes back to the restarted coordinator and signs what it is sent
    await node("m-restart", reply, 2048, { account, onReceiptRequest: answer({ sign: true }) });
    await waitFor("the receipt to be accepted", async () => {
      const row = await coordinator.db
        .selectFrom("receipts")
        .select("status")
        .where("node_address", "=", account.address.toLowerCase())
        .executeTakeFirst();
      return row?.status === "accepted";
    });
    const earned = await coordinator.db
      .selectFrom("ledger_entries")
      .select(sql<string>`sum(amount)`.as("total"))
      .where("address", "=", account.address.toLowerCase())
      .where("kind", "=", "earn")
      .executeTakeFirstOrThrow();
    expect(BigInt(earned.total)).toBe(charged);
    const waiting = coordinator.db.selectFrom("receipt_proposals").selectAll().where("node_address", "=", account.address.toLowerCase());
    expect(await waiting.execute()).toEqual([]);
  });
});
