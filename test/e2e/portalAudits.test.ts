/// <reference lib="dom" />
/**
 * Audits in the web portal (Debian's Chromium through playwright-core) against the real system: a
 * coordinator with the real contracts on a dev chain and audits on, a node and a trusted auditor
 * that speak the real control protocol (simulated: no llama-server). Every paid job of the node is
 * audited, and the auditor's scores fail it: two failed audits exclude it. Then the node's owner
 * sees the record on the Earnings page, and the operator sees it on the Audits page (a wrong key
 * and a wallet's key are refused there) and clears the node.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import type { AuditStart, CoordinatorFrame, EarningsResponse, NodeFrame } from "@sharedllm/protocol";
import type { Browser, Page } from "playwright-core";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, openPortal, type Portal, reportPortalFailure, TestWallet } from "../browser.ts";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { SimNode, signsReceipts, streamWords } from "../simNode.ts";

const joinToken = randomBytes(32).toString("base64url");
const MODEL = "m-portal-audit";
/** the auditor serves the same model file under another name, so that the jobs go to the audited node */
const AUDITOR_MODEL = "m-portal-audit-auditor";
const SHA = "ef".repeat(32);

let chain: TestChain;
let database: TestDatabase;
let coordinator: Coordinator;
let browser: Browser;
/** a wallet's key: it pays for the jobs, and the audits page refuses it */
let walletKey: string;
let operatorKey: string;
let auditor: SimNode;
let node: SimNode;
const portals: Portal[] = [];

beforeAll(async () => {
  chain = await startTestChain();
  database = await testDatabase();
  const auditorAccount = privateKeyToAccount(generatePrivateKey());
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    // every job audited (new nodes: rate 1, and the draw is always 0); the second failure excludes
    ledger: { ...chain.ledgerOptions(), audits: { auditors: [auditorAccount.address], excludeAfter: 2, random: () => 0 } },
  });
  const wallet = devWallet(16);
  await chain.deposit(wallet, 1_000_000n);
  walletKey = await createKey(coordinator.url, await signIn(coordinator.url, wallet, chain.chainId));
  operatorKey = (await createApiKey(coordinator.db, "operator")).secret;

  // the auditor holds its answers until the node has signed its receipts (so that it has earnings to forfeit), then fails every token
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const fail = (frame: AuditStart, send: (f: NodeFrame) => void) =>
    send({
      type: "audit.result",
      auditId: frame.auditId,
      promptTokens: 3,
      scores: frame.positions.map((position) => {
        const claimed = frame.claimed[position] as number;
        return { position, rank: null, logprob: null, top: claimed + 1, topLogprob: -0.1, floorLogprob: -9 };
      }),
    });
  auditor = new SimNode({
    coordinatorUrl: coordinator.url,
    joinToken,
    account: auditorAccount,
    served: [{ id: AUDITOR_MODEL, sha256: SHA, contextSize: 2048 }],
    models: [AUDITOR_MODEL],
    slots: 1,
    hello: { auditor: true },
    onFrame: (frame: CoordinatorFrame, send) => {
      if (frame.type === "audit.start") released.then(() => fail(frame, send));
    },
  });
  node = new SimNode({
    coordinatorUrl: coordinator.url,
    joinToken,
    served: [{ id: MODEL, sha256: SHA, contextSize: 2048 }],
    models: [MODEL],
    slots: 1,
    onJob: (job, send) => streamWords(job, send, ["one", " two"], { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }),
    onReceiptRequest: (req, send) => signsReceipts(node.account)(req, send),
  });
  await Promise.all([auditor.start(), node.start(), launchBrowser().then((b) => (browser = b))]);

  for (const content of ["a", "b"]) {
    const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${walletKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, max_tokens: 8, messages: [{ role: "user", content }] }),
    });
    expect(res.status).toBe(200);
  }
  await waitFor("both receipts signed", async () => ((await earnings(node.id)).served.jobs === 2 ? true : undefined));
  release();
  await waitFor("the node excluded", async () => ((await earnings(node.id)).audits.excluded ? true : undefined));
}, 180_000);

afterAll(async () => {
  for (const p of portals) await p.context.close();
  await browser?.close();
  auditor?.stop();
  node?.stop();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
});

afterEach((ctx) => reportPortalFailure(ctx, portals.at(-1)));

async function earnings(id: string): Promise<EarningsResponse> {
  return (await (await fetch(`${coordinator.url}/v1/earnings/${id}`)).json()) as EarningsResponse;
}

async function open(wallet: TestWallet | undefined): Promise<Portal> {
  const p = await openPortal(browser, coordinator.url, wallet);
  portals.push(p);
  return p;
}

async function go(page: Page, name: string) {
  await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name }).click();
  await page.getByRole("heading", { level: 1, name }).waitFor();
}

const text = async (page: Page, testId: string) => (await page.getByTestId(testId).textContent()) ?? "";

describe("audits in the web portal", () => {
  it("a node's owner sees its audit record on the Earnings page, forfeited earnings in the set-aside figure", async () => {
    const { page, errors, screenshot } = await open(new TestWallet(node.account, chain.rpcUrl, chain.chainId));
    await page.getByRole("button", { name: "Connect wallet" }).click();
    await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
    await go(page, "Earnings");
    await page
      .getByTestId("audits-excluded")
      .getByText(/failed audits, the last: /)
      .waitFor();
    expect([await text(page, "audits-passed"), await text(page, "audits-failed"), await text(page, "audits-suspicion")]).toEqual([
      "0",
      "2",
      "2",
    ]);
    // its earnings of the window were forfeited: the set-aside figure is what the API says, and not zero
    const { setAside } = await earnings(node.id);
    expect(BigInt(setAside)).toBeGreaterThan(0n);
    expect((await text(page, "set-aside")).replaceAll(",", "")).toBe(setAside);
    await page.getByText("counted in the “Set aside” figure").waitFor();
    await screenshot("earnings-audits");
    expect(errors).toEqual([]);
  }, 60_000);

  it("the operator's key opens the Audits page (a wrong key and a wallet's key are refused), with the evidence, and clears the node", async () => {
    const { page, errors, screenshot } = await open(undefined);
    await page.getByRole("heading", { level: 1 }).waitFor();
    await go(page, "Audits");
    const key = page.getByRole("textbox", { name: "Operator key" });
    const refusal = async (k: string, said: string) => {
      await key.fill(k);
      await page.getByRole("button", { name: "Show audits" }).click();
      await page.getByRole("alert").filter({ hasText: said }).waitFor();
      expect(await key.getAttribute("aria-invalid")).toBe("true");
    };
    await refusal("sk-not-a-key", "does not accept this key");
    await refusal(walletKey, "This key belongs to a wallet");

    await key.fill(operatorKey);
    await page.getByRole("button", { name: "Show audits" }).click();
    await page.getByRole("heading", { name: "Recent audits" }).waitFor();
    expect([await text(page, "total-passed"), await text(page, "total-failed")]).toEqual(["0", "2"]);
    const row = page.locator(`tr[data-node="${node.id}"]`);
    await row.getByText(/^Excluded since .*failed audits, the last: /).waitFor();
    expect(await page.getByRole("list", { name: "Auditors" }).textContent()).toMatch(/ connected$/);
    // the key is kept in this tab only
    const stored = () =>
      page.evaluate(
        (k) => [sessionStorage.getItem("sharedllm.operatorKey"), Object.values(localStorage).some((v) => v.includes(k))],
        operatorKey,
      );
    await expect.poll(stored).toEqual([operatorKey, false]);

    // a failed audit's evidence
    await page.getByRole("button", { name: "Evidence" }).first().click();
    expect(await text(page, "evidence-prompt-tokens")).toMatch(/claimed by the receipt, 3 counted by the auditor$/);
    await page.getByRole("cell", { name: "not in its top tokens" }).first().waitFor();
    await screenshot("audits");

    // cleared after a confirmation
    await row.getByRole("button", { name: `Clear ${node.id}` }).click();
    await page.getByRole("button", { name: /^Yes, clear/ }).click();
    await row.getByText("In good standing").waitFor();
    expect((await earnings(node.id)).audits).toMatchObject({ failed: 2, suspicion: 0, excluded: null });
    // (the browser logs the refused requests' 401 and 403)
    expect(errors.filter((e) => !/status of 40[13]/.test(e))).toEqual([]);
  }, 60_000);
});
