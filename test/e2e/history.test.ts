/// <reference lib="dom" />
/**
 * The chain's history on real parts: the dev chain with the real contracts, a coordinator with the
 * ledger and its embedded indexer, a real node on the default model. A scripted sequence (buy into
 * escrow, chat, settle, claim, withdraw, register, admit and endorse sites) with the coordinator
 * restarted midway on the same database; what it indexed equals what the chain says, read here
 * with viem on its own; the portal's History page shows it in Chromium, each row linking its
 * transaction.
 */
import { CreditLedger, DEV_DEPLOYER_KEY, FederationRegistry } from "@sharedllm/contracts";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import type { EarningsResponse } from "@sharedllm/protocol";
import OpenAI from "openai";
import type { Browser } from "playwright-core";
import { type Address, decodeFunctionData, type Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, openPortal, type Portal, reportPortalFailure, TestWallet } from "../browser.ts";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, waitFor } from "../helpers.ts";
import { MODEL, type System, startSystem } from "../system.ts";

let chain: TestChain;
let sys: System;
/** the coordinator after the restart, on the first one's database */
let restarted: Coordinator | undefined;
let browser: Browser | undefined;
let portal: Portal | undefined;

const indexer = () => ({ registry: chain.registry, pollMs: 100 });

beforeAll(async () => {
  chain = await startTestChain();
  sys = await startSystem({ ledger: chain.ledgerOptions(), indexer: indexer() });
  await chain.fund(sys.node.nodeId as Address);
}, 240_000);

afterAll(async () => {
  await portal?.context.close();
  await browser?.close();
  if (restarted) {
    await restarted.close();
    await sys.database.cleanup();
    await sys.paths.cleanup();
  } else await sys?.close();
  await chain?.stop();
});

afterEach((ctx) => reportPortalFailure(ctx, portal));

/** Which table each event lands in and the arguments it keeps (this test's own reading of docs/indexing.md). */
const KEPT: Record<string, { table: string; args: string[] }> = {
  CreditsBought: { table: "credit_purchases", args: ["buyer", "credits", "paid", "token"] },
  Deposited: { table: "deposits", args: ["user", "coordinator", "amount"] },
  WithdrawalRequested: { table: "withdrawal_requests", args: ["user", "coordinator", "amount", "unlockAt"] },
  Withdrawn: { table: "withdrawals", args: ["user", "coordinator", "amount"] },
  BatchSettled: { table: "settlement_batches", args: ["coordinator", "batchId", "earningsRoot", "batchSpent", "totalEarnings", "users"] },
  SpendShortfall: { table: "spend_shortfalls", args: ["user", "coordinator", "posted", "covered"] },
  Claimed: { table: "claims", args: ["coordinator", "node", "amount", "cumulative"] },
  Registered: { table: "site_registrations", args: ["coordinator", "publicKey", "keyId", "validUntil", "url", "metadata"] },
  Admitted: { table: "admissions", args: ["coordinator"] },
  Endorsed: { table: "endorsement_changes", args: ["site", "peer", "endorsed"] },
  RoleGranted: { table: "role_changes", args: ["role", "account", "sender"] },
};
const snake = (s: string) => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const norm = (v: unknown) => String(v).toLowerCase();

/** Waits until the coordinator indexed the chain's head, then checks every kept event against the chain's logs. */
async function matchesChain(c: Coordinator) {
  const head = await chain.publicClient.getBlockNumber({ cacheTime: 0 });
  await waitFor("the indexer to reach the head", async () => ((await c.indexer?.status())?.block?.number ?? -1n) >= head || undefined);
  const logs = [
    ...(await chain.publicClient.getContractEvents({ address: chain.ledger, abi: CreditLedger.abi, fromBlock: 0n })),
    ...(await chain.publicClient.getContractEvents({ address: chain.registry, abi: FederationRegistry.abi, fromBlock: 0n })),
  ];
  const fromChain = logs
    .filter((l) => KEPT[l.eventName])
    .map((l) => {
      const k = KEPT[l.eventName] as { table: string; args: string[] };
      const args = l.args as Record<string, unknown>;
      return `${k.table} ${l.transactionHash}:${l.logIndex} ${k.args.map((a) => norm(args[a])).join(",")}`;
    });
  const indexed: string[] = [];
  for (const { table, args } of new Map(Object.values(KEPT).map((k) => [k.table, k])).values()) {
    const rows = (await c.db
      .selectFrom(table as "deposits")
      .selectAll()
      .execute()) as unknown as Record<string, unknown>[];
    for (const r of rows) indexed.push(`${table} ${r.tx_hash}:${r.log_index} ${args.map((a) => norm(r[snake(a)])).join(",")}`);
  }
  expect(indexed.sort()).toEqual(fromChain.sort());
  // who each settlement charged: the settle call's own input
  const batchUsers = await c.db.selectFrom("settlement_batch_users").select(["tx_hash", "user", "cumulative_spent"]).execute();
  const expected: string[] = [];
  for (const l of logs.filter((l) => l.eventName === "BatchSettled")) {
    const call = decodeFunctionData({
      abi: CreditLedger.abi,
      data: (await chain.publicClient.getTransaction({ hash: l.transactionHash })).input,
    });
    const [, users, spent] = call.args as unknown as [bigint, Address[], bigint[]];
    users.forEach((u, i) => {
      expected.push(`${l.transactionHash} ${u.toLowerCase()} ${spent[i]}`);
    });
  }
  expect(batchUsers.map((r) => `${r.tx_hash} ${r.user} ${r.cumulative_spent}`).sort()).toEqual(expected.sort());
}

async function history<T>(c: Coordinator, path: string): Promise<T[]> {
  const res = await fetch(`${c.url}/v1/history/${path}`);
  expect(res.status, path).toBe(200);
  return ((await res.json()) as { data: T[] }).data;
}

describe("the chain's history", () => {
  it("equals what the chain says across a coordinator restart, and the portal's History page shows it with links", async () => {
    const user = devWallet(8);
    const node = sys.node.nodeId.toLowerCase() as Address;
    const coordinator = chain.coordinator.address;

    // buy into escrow, chat with a wallet key, and wait for the settlement that charges it
    await chain.deposit(user, 100_000n);
    const session = await signIn(sys.coordinator.url, user, chain.chainId);
    const key = await createKey(sys.coordinator.url, session);
    const client = new OpenAI({ baseURL: `${sys.coordinator.url}/v1`, apiKey: key, maxRetries: 0 });
    await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Say hi." }], max_tokens: 8, temperature: 0 });
    await waitFor("the chat's settlement", async () => ((await chain.escrow(user.address)).spent > 0n ? true : undefined), 30_000);
    await matchesChain(sys.coordinator);
    const cursorBefore = (await sys.coordinator.indexer?.status())?.block?.number ?? -1n;

    // the coordinator restarts on the same database; the rest happens while it is down and after
    await sys.node.stop();
    await sys.coordinator.close();
    restarted = await startCoordinator({
      host: "127.0.0.1",
      port: 0,
      ...sys.database,
      joinToken: sys.joinToken,
      logger: quietLogger(),
      ledger: chain.ledgerOptions(),
      indexer: indexer(),
    });
    const c = restarted;
    // it resumes from the cursor the first one left in the database
    expect((await c.indexer?.status())?.block?.number).toBeGreaterThanOrEqual(cursorBefore);

    // the node's earnings claimed (anyone may send a claim), part of the escrow withdrawn
    const e = (await (await fetch(`${c.url}/v1/earnings/${node}`)).json()) as EarningsResponse;
    expect(e.claim).not.toBeNull();
    await chain.send(user, "ledger", "claim", [coordinator, node, BigInt(e.claim?.cumulative ?? 0), e.claim?.proof ?? []]);
    await chain.send(user, "ledger", "requestWithdrawal", [coordinator, 1_000n]);
    await chain.test.increaseTime({ seconds: 3_601 });
    await chain.test.mine({ blocks: 1 });
    const withdrawn = await chain.send(user, "ledger", "withdraw", [coordinator]);

    // two sites register; governance admits one, which endorses the other
    const [a, b] = [privateKeyToAccount(generatePrivateKey()), privateKeyToAccount(generatePrivateKey())];
    const validUntil = BigInt(Math.floor(Date.now() / 1000) + 30 * 86_400);
    for (const [site, url] of [
      [a, "https://a.example"],
      [b, "https://b.example"],
    ] as const) {
      await chain.fund(site.address);
      await chain.send(site, "registry", "register", [`0x${site.publicKey.slice(4)}` as Hex, 1, validUntil, url, "{}"]);
    }
    await chain.send(privateKeyToAccount(DEV_DEPLOYER_KEY), "registry", "admit", [a.address]);
    await chain.send(a, "registry", "endorse", [b.address, true]);
    await matchesChain(c);

    // what the routes say adds up to the contracts' own state
    const escrow = await chain.escrow(user.address);
    const moves = await history<{ kind: string; amount: string }>(c, `${user.address}/escrow`);
    expect(moves.map((m) => m.kind)).toEqual(["withdrawal", "withdrawal_request", "deposit"]);
    const deposited = moves.filter((m) => m.kind === "deposit").reduce((s, m) => s + BigInt(m.amount), 0n);
    const taken = moves.filter((m) => m.kind === "withdrawal").reduce((s, m) => s + BigInt(m.amount), 0n);
    expect(deposited - taken).toBe(escrow.deposited);
    const settlements = await history<{ cumulativeSpent: string; batchId: string }>(c, `${user.address}/settlements`);
    expect(BigInt(settlements[0]?.cumulativeSpent ?? -1)).toBe(escrow.spent);
    expect(BigInt(settlements[0]?.batchId ?? -1)).toBe((await chain.settlement()).lastBatch);
    const claims = await history<{ cumulative: string }>(c, `${node}/claims`);
    expect(claims.map((x) => BigInt(x.cumulative))).toEqual([
      await chain.publicClient.readContract({
        address: chain.ledger,
        abi: CreditLedger.abi,
        functionName: "claimed",
        args: [coordinator, node],
      }),
    ]);
    const fed = await history<{ kind: string; coordinator: string }>(c, `federation?address=${b.address}`);
    expect(fed.map((x) => x.kind)).toEqual(["endorsed", "registered"]);
    const bad = await fetch(`${c.url}/v1/history/${user.address}/escrow?limit=1e2`);
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe("limit");
    // a cursor too large for the columns is refused, the largest taken is answered
    expect((await fetch(`${c.url}/v1/history/${user.address}/escrow?cursor=99999999999999999999.1`)).status).toBe(400);
    expect((await history(c, `${user.address}/escrow?cursor=999999999999999999.999999999`)).length).toBe(3);

    // the portal: the wallet's History page, each row linking the coordinator's record of its transaction
    browser = await launchBrowser();
    portal = await openPortal(browser, c.url, new TestWallet(user, chain.rpcUrl, chain.chainId));
    const { page, screenshot } = portal;
    await page.getByRole("button", { name: "Connect wallet" }).click();
    await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
    await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: "History" }).click();
    await page.getByRole("heading", { level: 1, name: "History" }).waitFor();
    const rows = (id: string) => page.getByTestId(`history-${id}`).locator("tbody tr");
    await waitFor("the escrow rows", async () => ((await rows("escrow").count()) === 3 ? true : undefined), 15_000);
    expect(await rows("escrow").first().textContent()).toContain("withdrawal");
    expect(await rows("purchases").first().textContent()).toContain("100,000");
    await waitFor("the settlement row", async () => ((await rows("settlements").count()) >= 1 ? true : undefined));
    await waitFor("the federation rows", async () => ((await rows("federation").count()) >= 4 ? true : undefined));
    const href = await rows("escrow").first().getByRole("link").getAttribute("href");
    expect(href).toBe(`/v1/history/transactions/${withdrawn.transactionHash}`);
    const tx = (await (await fetch(`${c.url}${href}`)).json()) as { events: { entity: string }[] };
    expect(tx.events.map((x) => x.entity)).toEqual(["withdrawals"]);
    await screenshot("history-wallet");
    await page.getByLabel("Another address (a node's)").fill(node);
    await page.getByRole("button", { name: "Show", exact: true }).click();
    await waitFor("the node's claim", async () => ((await rows("claims").count()) === 1 ? true : undefined));
    await screenshot("history-node");
  });
});
