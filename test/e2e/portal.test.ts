/// <reference lib="dom" />
/**
 * The web portal in a real browser (Debian's Chromium through playwright-core) against the real
 * system: the local chain with the real contracts, a coordinator with the ledger serving the
 * portal's build, and a real node on the default model. The wallet is injected and signs with
 * dev-chain accounts for real. Screenshots of every page land in test-artifacts/screenshots.
 */

import { loadNodeIdentity } from "@sharedllm/node";
import type { Browser, Page } from "playwright-core";
import { type Account, type Address, getAddress } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, openPortal, type Portal, reportPortalFailure, TestWallet } from "../browser.ts";
import { devWallet, startTestChain, type TestChain } from "../chain.ts";
import { waitFor } from "../helpers.ts";
import { MODEL, type System, startSystem } from "../system.ts";

let chain: TestChain;
let sys: System;
let browser: Browser;
const portals: Portal[] = [];

beforeAll(async () => {
  chain = await startTestChain();
  sys = await startSystem({ ledger: chain.ledgerOptions() });
  await chain.fund(sys.node.nodeId as Address);
  browser = await launchBrowser();
}, 240_000);

afterAll(async () => {
  for (const p of portals) await p.context.close();
  await browser?.close();
  await sys?.close();
  await chain?.stop();
});

// a failed test leaves the last page's screenshot and text behind
afterEach((ctx) => reportPortalFailure(ctx, portals.at(-1)));

async function open(wallet: TestWallet | undefined, width = 1280): Promise<Portal> {
  const p = await openPortal(browser, sys.coordinator.url, wallet, width);
  portals.push(p);
  return p;
}

const wallet = (account: Account) => new TestWallet(account, chain.rpcUrl, chain.chainId);

/** Connects the injected wallet and signs in with Ethereum. */
async function signIn(page: Page) {
  await page.getByRole("button", { name: "Connect wallet" }).click();
  await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

async function go(page: Page, name: string) {
  await page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name }).click();
  await page.getByRole("heading", { level: 1, name }).waitFor();
}

/** The number shown in an element, without thousands separators. */
async function shown(page: Page, testId: string): Promise<bigint> {
  const text = (await page.getByTestId(testId).textContent()) ?? "";
  return /^[\d,]+$/.test(text) ? BigInt(text.replaceAll(",", "")) : -1n;
}

describe("the web portal in Chromium", () => {
  it("a wallet connects, signs in, deposits, makes a key, chats with streamed output, and its balance falls by exactly the charge", async () => {
    const user = wallet(devWallet(6));
    const { page, errors, screenshot } = await open(user);
    await page.getByText("Connect a wallet to buy credits").waitFor();
    await screenshot("connect");
    await signIn(page);
    // the session survives a reload
    await page.reload();
    await page.getByRole("button", { name: "Sign out" }).waitFor();
    await page.getByRole("heading", { name: "Balance" }).waitFor();
    await waitFor("the balance", async () => ((await shown(page, "available")) === 0n ? true : undefined), 10_000);

    // buy 50,000 credits into escrow: one transaction, its progress shown
    await page.getByLabel("Credits", { exact: true }).first().fill("50000");
    await page.getByRole("button", { name: "Buy and deposit" }).click();
    await page.getByText("Buying 50,000 credits: done.").waitFor({ timeout: 30_000 });
    await waitFor("the deposit to show", async () => ((await shown(page, "available")) === 50_000n ? true : undefined), 15_000);
    expect((await chain.escrow(getAddress(user.address))).deposited).toBe(50_000n);
    await screenshot("credits");

    // an API key: shown once, works, and is revoked
    await go(page, "API keys");
    await page.getByLabel("Name").fill("laptop");
    await page.getByRole("button", { name: "Create key" }).click();
    const secret = (await page.getByTestId("new-key").textContent()) ?? "";
    expect(secret).toMatch(/^sk-/);
    const models = (k: string) =>
      fetch(`${sys.coordinator.url}/v1/models`, { headers: { authorization: `Bearer ${k}` } }).then((r) => r.status);
    expect(await models(secret)).toBe(200);
    await screenshot("keys");
    await page.getByRole("button", { name: "Revoke laptop" }).click();
    await page.getByRole("cell", { name: "revoked" }).waitFor();
    expect(await models(secret)).toBe(401);

    // the playground streams a reply and charges the wallet
    await go(page, "Playground");
    await page.getByRole("button", { name: "Create a playground key" }).click();
    await page.getByLabel("Model").locator(`option[value="${MODEL}"]`).waitFor({ state: "attached" });
    const before = await waitFor("the balance in the playground", async () => {
      const v = await shown(page, "playground-available");
      return v >= 0n ? v : undefined;
    });
    expect(before).toBe(50_000n);
    const chargedBefore = await sys.journal(user.address, "charge");
    // count how often the reply's text changes while it streams
    await page.evaluate(() => {
      const w = window as unknown as { __updates: number };
      w.__updates = 0;
      new MutationObserver(() => {
        w.__updates++;
      }).observe(document.body, { subtree: true, characterData: true, childList: true });
    });
    await page.getByLabel("Message").fill("Write two sentences about the sea.");
    await page.getByLabel("Message").press("Enter");
    await page.getByTestId("cost").waitFor({ timeout: 60_000 });
    const reply = (await page.getByTestId("reply").textContent()) ?? "";
    expect(reply.length).toBeGreaterThan(10);
    expect(await page.evaluate(() => (window as unknown as { __updates: number }).__updates)).toBeGreaterThan(5);
    const charged = (await sys.journal(user.address, "charge")) - chargedBefore;
    expect(charged).toBeGreaterThan(0n);
    // the cost the page shows is the journal's charge, and the balance falls by exactly that
    expect(await page.getByTestId("cost").textContent()).toContain(`${charged.toLocaleString("en-US")} credits`);
    await waitFor(
      "the balance to fall by the charge",
      async () => ((await shown(page, "playground-available")) === before - charged ? true : undefined),
      15_000,
    );
    await screenshot("playground");

    // a withdrawal waits out its notice on the chain's clock, then returns the credits out of escrow
    await go(page, "Credits");
    const available = await shown(page, "available");
    await page.getByLabel("Credits", { exact: true }).nth(1).fill("1000");
    await page.getByRole("button", { name: "Announce withdrawal" }).click();
    await page.getByText("Announcing a withdrawal of 1,000 credits: done.").waitFor({ timeout: 30_000 });
    await page.getByText(/1,000 credits unlock at/).waitFor();
    expect(await page.getByRole("button", { name: "Withdraw", exact: true }).isDisabled()).toBe(true);
    await waitFor(
      "the balance to leave out the withdrawal",
      async () => ((await shown(page, "available")) === available - 1_000n ? true : undefined),
      15_000,
    );
    await chain.test.increaseTime({ seconds: 3_601 });
    await chain.test.mine({ blocks: 1 });
    await page.getByText("1,000 credits can be withdrawn now.").waitFor({ timeout: 15_000 });
    await page.getByRole("button", { name: "Withdraw", exact: true }).click();
    await page.getByText("Withdrawing: done.").waitFor({ timeout: 30_000 });
    expect(await chain.credits(getAddress(user.address))).toBe(1_000n);
    await page.getByText("credits outside escrow: 1,000").waitFor();
    await screenshot("credits-withdrawn");

    // the key's usage is listed
    await go(page, "API keys");
    const row = page.getByRole("row").filter({ hasText: "playground" });
    await expect.poll(async () => (await row.getByRole("cell").nth(2).textContent()) ?? "", { timeout: 15_000 }).toBe("1");

    // the network map shows the node serving the model
    await go(page, "Network");
    await page.locator(`[data-node="${sys.node.nodeId}"]`).getByText(MODEL).waitFor();
    await screenshot("network");
    expect(errors).toEqual([]);
  }, 180_000);

  it("a contributor sees its node's earnings and claims them; its on-chain credits rise by the claimed amount", async () => {
    const identity = await loadNodeIdentity(sys.paths.home);
    const contributor = wallet((identity as NonNullable<typeof identity>).account);
    const node = getAddress(sys.node.nodeId);
    const { page, errors, screenshot } = await open(contributor);
    await signIn(page);
    await go(page, "Earnings");
    await page.getByText("online · solo").waitFor();
    // the earnings of the first test settle within a second (batches by age, 300 ms), once the
    // node has signed every receipt proposed to it (each signed receipt is an earning)
    await waitFor(
      "every receipt proposed to the node signed",
      async () =>
        (await sys.coordinator.db.selectFrom("receipt_proposals").select("job_id").where("node_address", "=", node.toLowerCase()).execute())
          .length === 0,
      30_000,
    );
    const earned = await sys.journal(node, "earn");
    expect(earned).toBeGreaterThan(0n);
    const claimable = await waitFor(
      "all its earnings to be claimable",
      async () => ((await shown(page, "claimable")) === earned ? earned : undefined),
      30_000,
      250,
    );
    // what it served: one receipt per paid job, with the job's tokens
    const receipts = await sys.coordinator.db
      .selectFrom("receipts")
      .select("receipt")
      .where("node_address", "=", node.toLowerCase())
      .where("status", "=", "accepted")
      .execute();
    const tokens = receipts.reduce((n, r) => {
      const w = JSON.parse(r.receipt) as { promptTokens: number; completionTokens: number };
      return n + w.promptTokens + w.completionTokens;
    }, 0);
    expect(receipts.length).toBeGreaterThan(0);
    await page
      .getByText(`Served ${receipts.length} job${receipts.length === 1 ? "" : "s"}, ${tokens.toLocaleString("en-US")} tokens.`)
      .waitFor();
    const onChainBefore = await chain.credits(node);
    expect(await shown(page, "onchain")).toBe(onChainBefore);
    await screenshot("earnings");
    await page.getByRole("button", { name: /^Claim/ }).click();
    await page.getByText(/Claiming [\d,]+ credits: done\./).waitFor({ timeout: 30_000 });
    expect(await chain.credits(node)).toBe(onChainBefore + claimable);
    await waitFor(
      "the page to show the claim",
      async () => ((await shown(page, "onchain")) === onChainBefore + claimable ? true : undefined),
      10_000,
    );
    // what was claimed is no longer claimable: the page shows only what the node earned since (a
    // job that ended meanwhile may have settled more; CI once saw 87 credits there, source not yet found)
    await waitFor(
      "the page to show only what was earned since the claim",
      async () => ((await shown(page, "claimable")) === (await sys.journal(node, "earn")) - claimable ? true : undefined),
      10_000,
    );
    await screenshot("earnings-claimed");
    expect(errors).toEqual([]);
  }, 120_000);

  it("works at 375 px wide and by keyboard", async () => {
    const { page, errors, screenshot } = await open(wallet(devWallet(6)), 375);
    // the navigation and the wallet button are reached with Tab and work with Enter
    const reached: string[] = [];
    await page.getByRole("button", { name: "Connect wallet" }).waitFor();
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press("Tab");
      reached.push(await page.evaluate(() => document.activeElement?.textContent ?? ""));
    }
    expect(reached).toEqual(expect.arrayContaining(["Connect wallet", "Credits", "API keys", "Earnings", "Network", "Playground"]));
    while ((await page.evaluate(() => document.activeElement?.textContent)) !== "Network") await page.keyboard.press("Shift+Tab");
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { level: 1, name: "Network" }).waitFor();
    await go(page, "Credits");
    await signIn(page);
    for (const name of ["Credits", "API keys", "Earnings", "Network", "Playground"]) {
      await go(page, name);
      // nothing sticks out of the screen (elements inside a scrolling box do not count)
      const outside = await page.evaluate(() =>
        Array.from(document.querySelectorAll("body *"))
          .filter((e) => e.getBoundingClientRect().right > 375.5 && !e.closest(".table-wrap, nav"))
          .map((e) => `${e.tagName.toLowerCase()}.${e.className}`),
      );
      expect(outside).toEqual([]);
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
      await screenshot(name.toLowerCase().replace(" ", "-"));
    }
    expect(errors).toEqual([]);
  }, 120_000);

  describe("failure paths", () => {
    it("a rejected signature is said plainly and nothing is signed in", async () => {
      const user = wallet(devWallet(7));
      user.rejects.add("personal_sign");
      const { page, screenshot } = await open(user);
      await page.getByRole("button", { name: "Connect wallet" }).click();
      await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
      await page.getByRole("alert").filter({ hasText: "You rejected the request in your wallet" }).waitFor();
      await screenshot("signature-rejected");
      expect(await page.getByRole("button", { name: "Sign out" }).count()).toBe(0);
      // the user changes their mind
      user.rejects.delete("personal_sign");
      await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
      await page.getByRole("button", { name: "Sign out" }).waitFor();
    }, 60_000);

    it("a wallet on another chain is asked to switch; one without ETH is told so", async () => {
      const broke = wallet(privateKeyToAccount(generatePrivateKey()));
      broke.chainId = 1;
      const { page, screenshot } = await open(broke);
      await page.getByRole("button", { name: "Connect wallet" }).click();
      await page.getByText(`Your wallet is on chain 1; this coordinator settles on chain ${chain.chainId}.`).waitFor();
      await screenshot("wrong-chain");
      await page.getByRole("button", { name: `Switch to chain ${chain.chainId}` }).click();
      await page.getByText("Your wallet is on chain 1").waitFor({ state: "detached" });
      await page.getByRole("button", { name: "Sign in with Ethereum" }).click();
      await page.getByRole("button", { name: "Buy and deposit" }).click();
      await page.getByRole("alert").filter({ hasText: "does not have enough ETH" }).waitFor({ timeout: 20_000 });
      await screenshot("insufficient-funds");
    }, 60_000);

    it("a chat without enough credits gets the 402 said plainly and costs nothing", async () => {
      const poor = wallet(devWallet(8));
      const { page, screenshot } = await open(poor);
      await signIn(page);
      await go(page, "Playground");
      await page.getByRole("button", { name: "Create a playground key" }).click();
      await page.getByLabel("Model").locator(`option[value="${MODEL}"]`).waitFor({ state: "attached" });
      await page.getByLabel("Message").fill("Hello?");
      await page.getByRole("button", { name: "Send" }).click();
      await page.getByRole("alert").filter({ hasText: "Not enough credits" }).waitFor({ timeout: 20_000 });
      await screenshot("insufficient-credits");
      expect(await sys.journal(poor.address, "charge")).toBe(0n);
    }, 60_000);

    it("a browser without a wallet, and a coordinator that goes down, are said plainly in the open page", async () => {
      const { page, screenshot } = await open(undefined);
      await page.getByRole("heading", { level: 1 }).waitFor();
      // (this browser has no wallet at all)
      await page.getByRole("button", { name: "Connect wallet" }).click();
      await page.getByRole("alert").filter({ hasText: "No wallet found in this browser." }).waitFor();
      await go(page, "Network");
      await sys.coordinator.app.close();
      await page.getByRole("alert").filter({ hasText: "Cannot reach the coordinator" }).waitFor({ timeout: 15_000 });
      await screenshot("coordinator-down");
    }, 60_000);
  });
});

describe("the portal of a coordinator without credits", () => {
  let free: System;
  beforeAll(async () => {
    free = await startSystem();
  }, 240_000);
  afterAll(async () => {
    await free?.close();
  });

  it("shows the network map and a playground that takes a pasted key, and nothing of wallets", async () => {
    const portal = await openPortal(browser, free.coordinator.url, undefined);
    portals.push(portal);
    const { page, errors, screenshot } = portal;
    await page.getByRole("heading", { level: 1, name: "Network" }).waitFor();
    await page.locator(`[data-node="${free.node.nodeId}"]`).getByText(MODEL).waitFor();
    expect(await page.getByRole("navigation", { name: "Pages" }).getByRole("link").allTextContents()).toEqual([
      "Network",
      "Playground",
      "Federation",
    ]);
    expect(await page.getByRole("button", { name: "Connect wallet" }).count()).toBe(0);
    await go(page, "Playground");
    await page.getByLabel("API key").fill(free.apiKey);
    await page.getByRole("button", { name: "Use key" }).click();
    await page.getByLabel("Model").locator(`option[value="${MODEL}"]`).waitFor({ state: "attached" });
    await page.getByLabel("Message").fill("Say hello.");
    await page.getByRole("button", { name: "Send" }).click();
    // the reply is in once the Send button is back (it reads Stop while the reply streams)
    await expect
      .poll(
        async () =>
          (await page.getByRole("button", { name: "Send" }).count()) && ((await page.getByTestId("reply").textContent()) ?? "").length,
        {
          timeout: 60_000,
        },
      )
      .toBeGreaterThan(5);
    await screenshot("no-credits-playground");
    // the map says why a node takes no jobs
    free.node.pause();
    await go(page, "Network");
    await page.locator(`[data-node="${free.node.nodeId}"]`).getByText("Not taking jobs: paused by its owner").waitFor({ timeout: 10_000 });
    await screenshot("network-paused");
    free.node.resume();
    expect(errors).toEqual([]);
  }, 120_000);
});
