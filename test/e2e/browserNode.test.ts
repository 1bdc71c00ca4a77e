/// <reference lib="dom" />
/**
 * A browser tab as a node (docs/browser-node.md), on real parts: Debian's Chromium (playwright-core)
 * opens the portal's Contribute page from the site's join link, its wallet signs the delegation,
 * and the tab fetches the default model by sha256, checks it, loads it in wllama (WebAssembly,
 * threaded: the portal is cross-origin isolated) and joins a real coordinator with the dev chain.
 * A user's chat through the official `openai` client is served by the tab; the text at
 * temperature 0 is compared with a native llama-server's for the same request; the receipt the tab
 * signs with its session key is accepted and credited to the wallet, which sees it on Earnings.
 */
import { randomBytes } from "node:crypto";
import { browserLinkToken, startCoordinator } from "@sharedllm/coordinator";
import { DEFAULT_MODEL, findEngine, type LlamaServer, ModelStore, resolvePaths, startLlamaServer, startNodeDaemon } from "@sharedllm/node";
import OpenAI from "openai";
import type { Browser } from "playwright-core";
import type { Account } from "viem";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { launchBrowser, openPortal, type Portal, reportPortalFailure, TestWallet } from "../browser.ts";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { journalSum, quietLogger, tempPaths, testDatabase, waitFor } from "../helpers.ts";

const MODEL = DEFAULT_MODEL.id;
const REQUEST = {
  model: MODEL,
  messages: [{ role: "user" as const, content: "What is the capital of France? Answer in one sentence." }],
  max_tokens: 24,
  temperature: 0,
};

let chain: TestChain;
let coordinator: Awaited<ReturnType<typeof startCoordinator>>;
let database: Awaited<ReturnType<typeof testDatabase>>;
let paths: Awaited<ReturnType<typeof tempPaths>>;
let native: LlamaServer;
let browser: Browser;
let client: OpenAI;
const joinToken = randomBytes(32).toString("base64url");
const portals: Portal[] = [];

beforeAll(async () => {
  const { cache } = resolvePaths();
  const store = new ModelStore(cache);
  const entry = await store.pull("default");
  paths = await tempPaths();
  chain = await startTestChain();
  database = await testDatabase();
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    ledger: chain.ledgerOptions(),
    browserNodes: {
      mode: "token",
      blobs: [{ id: MODEL, sha256: entry.sha256, path: store.blobPath(entry.sha256), sizeBytes: entry.size }],
    },
  });
  const engine = await findEngine(cache);
  if (!engine) throw new Error("the engine is not built: run the suite's global setup (npx sharedllm engine build)");
  native = await startLlamaServer({
    engine,
    modelId: MODEL,
    modelPath: store.blobPath(entry.sha256),
    slots: 1,
    contextPerSlot: 2048,
    logDir: paths.home,
  });
  const user = devWallet(5);
  await chain.deposit(user, 1_000_000n);
  const session = await signIn(coordinator.url, user, chain.chainId);
  client = new OpenAI({
    baseURL: `${coordinator.url}/v1`,
    apiKey: await createKey(coordinator.url, session, "browser-e2e"),
    maxRetries: 0,
    timeout: 120_000,
  });
  browser = await launchBrowser();
}, 300_000);

afterAll(async () => {
  for (const p of portals) await p.context.close().catch(() => {});
  await browser?.close();
  await native?.supervisor.stop();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
  await paths?.cleanup();
});

afterEach((ctx) => reportPortalFailure(ctx, portals.at(-1)));

const wallet = (account: Account) => new TestWallet(account, chain.rpcUrl, chain.chainId);

/** Opens the Contribute page (from the join link unless `link` is false), connects the wallet and presses Start. */
async function contribute(w: TestWallet, o: { link?: boolean; before?: (p: Portal) => Promise<void> } = {}): Promise<Portal> {
  const p = await openPortal(browser, `${coordinator.url}/contribute${o.link === false ? "" : `#token=${browserLinkToken(joinToken)}`}`, w);
  portals.push(p);
  await o.before?.(p);
  await p.page.getByRole("button", { name: "Connect wallet" }).click();
  await p.page.getByRole("button", { name: "Start" }).click();
  return p;
}

const state = (p: Portal) => p.page.getByTestId("node-state").getAttribute("data-state");

/** What a native llama-server answers to the same request (temperature 0). */
async function nativeAnswer(): Promise<{ text: string; tokensPerSecond: number }> {
  const res = await fetch(`${native.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${native.apiKey}` },
    body: JSON.stringify(REQUEST),
  });
  const body = (await res.json()) as { choices: { message: { content: string } }[]; timings: { predicted_per_second: number } };
  return { text: body.choices[0]?.message.content ?? "", tokensPerSecond: body.timings.predicted_per_second };
}

describe("a browser tab as a node", () => {
  it("serves a streamed chat from the openai client with the native engine's text; its receipt pays the wallet, shown on Earnings", async () => {
    const contributor = wallet(devWallet(7));
    const p = await contribute(contributor);
    await waitFor(
      "the tab to serve",
      async () =>
        (await state(p)) === "serving"
          ? true
          : (await state(p)) === "failed"
            ? Promise.reject(new Error((await p.page.getByTestId("node-state").textContent()) ?? ""))
            : undefined,
      180_000,
      250,
    );
    expect(await p.page.getByTestId("node-engine").textContent()).toMatch(/WebAssembly, \d+ threads?/);
    const nodeId = (await waitFor("the tab in the fleet", () => coordinator.fleet.list().find((n) => n.engine === "wllama-wasm")))?.id;

    // the owner's throttle: paused while the page is in view (it is: the page is visible), then back
    const pause = p.page.getByLabel("Pause while this page is in view");
    await pause.check();
    await waitFor("the tab paused", () => coordinator.fleet.get(nodeId as string)?.accepting === false);
    await waitFor("the page to say so", async () => ((await state(p)) === "paused" ? true : undefined));
    await pause.uncheck();
    await waitFor("the tab back", () => coordinator.fleet.get(nodeId as string)?.accepting);

    const { data: stream, response } = await client.chat.completions.create({ ...REQUEST, stream: true }).withResponse();
    expect(response.headers.get("x-sharedllm-node")).toBe(nodeId);
    let text = "";
    let events = 0;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? "";
      events++;
    }
    expect(events).toBeGreaterThan(3);
    const reference = await nativeAnswer();
    process.stderr.write(`browser (wasm): ${JSON.stringify(text)}\nnative:         ${JSON.stringify(reference.text)}\n`);
    expect(text).toBe(reference.text);

    // the tab signed its receipt with the session key; the wallet was credited
    const earned = await waitFor("the wallet's earnings", async () => {
      const v = await journalSum(coordinator.db, contributor.address, "earn");
      return v > 0n ? v : undefined;
    });
    expect(await journalSum(coordinator.db, nodeId as string, "earn")).toBe(0n);
    const accepted = await coordinator.db
      .selectFrom("receipts")
      .select("status")
      .where("node_address", "=", nodeId as string)
      .execute();
    expect(accepted.map((r) => r.status)).toEqual(["accepted"]);
    await waitFor("the page's credits", async () =>
      (await p.page.getByTestId("node-credits").textContent()) === earned.toLocaleString("en-US") ? true : undefined,
    );
    expect(await p.page.getByTestId("node-jobs").textContent()).toBe("1");
    await p.screenshot("contribute-serving");

    // the wallet sees it on the Earnings page
    await p.page.getByRole("navigation", { name: "Pages" }).getByRole("link", { name: "Earnings" }).click();
    await p.page.getByRole("button", { name: "Sign in with Ethereum" }).click();
    const figure = p.page.locator("dt", { hasText: /^Earned$/ }).locator("xpath=following-sibling::dd");
    await waitFor("Earned on the page", async () => ((await figure.textContent()) === earned.toLocaleString("en-US") ? true : undefined));
    // and the job its tab served, counted for the wallet
    const view = (await (await fetch(`${coordinator.url}/v1/earnings/${contributor.address}`)).json()) as { served: { jobs: number } };
    expect(view.served.jobs).toBe(1);

    // closing the tab takes the node out at once
    await p.context.close();
    await waitFor("the tab out of the fleet", () => (coordinator.fleet.get(nodeId as string) ? undefined : true), 5_000);
  }, 300_000);

  it("a tab closed mid-job: the client's stream ends with a clean error, and the scheduler drops the tab at once", async () => {
    const p = await contribute(wallet(devWallet(10)));
    await waitFor("the tab to serve", async () => ((await state(p)) === "serving" ? true : undefined), 180_000, 250);
    const nodeId = (await waitFor("the tab in the fleet", () => coordinator.fleet.list().find((n) => n.engine === "wllama-wasm")))
      ?.id as string;
    const stream = await client.chat.completions.create({
      ...REQUEST,
      messages: [{ role: "user", content: "Write a long story about the sea." }],
      max_tokens: 400,
      stream: true,
    });
    let text = "";
    let failure: Error | undefined;
    try {
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? "";
        // the tab goes away as soon as output has begun
        if (text && !p.page.isClosed()) await p.context.close();
      }
    } catch (err) {
      failure = err as Error;
    }
    expect(text.length).toBeGreaterThan(0);
    // no other node holds the model: the stream ends with the coordinator's error, not a hang or a cut connection
    process.stderr.write(`client saw: ${failure?.message}\n`);
    expect(failure?.message ?? "").toMatch(/no node|continue|failed|capacity/i);
    expect(coordinator.fleet.get(nodeId)).toBeUndefined();
  }, 300_000);

  it("a tab closed mid-job while a native node holds the model: the job continues there, one unbroken stream", async () => {
    const nativePaths = await tempPaths();
    const daemon = await startNodeDaemon({
      paths: nativePaths,
      coordinatorUrl: coordinator.url,
      joinToken,
      model: "default",
      slots: 1,
      contextPerSlot: 2048,
      logger: quietLogger(),
    });
    try {
      await waitFor("the native node", () => coordinator.fleet.get(daemon.nodeId)?.accepting, 60_000);
      // the native node stands aside until the tab has the job
      daemon.pause();
      await waitFor("the native node paused", () => coordinator.fleet.get(daemon.nodeId)?.accepting === false);
      const p = await contribute(wallet(devWallet(13)));
      await waitFor("the tab to serve", async () => ((await state(p)) === "serving" ? true : undefined), 180_000, 250);
      const tab = (await waitFor("the tab in the fleet", () => coordinator.fleet.list().find((n) => n.engine === "wllama-wasm")))
        ?.id as string;
      const request = {
        ...REQUEST,
        messages: [{ role: "user" as const, content: "Count from 1 to 30, separated by commas." }],
        max_tokens: 60,
      };
      const { data: stream, response } = await client.chat.completions.create({ ...request, stream: true }).withResponse();
      expect(response.headers.get("x-sharedllm-node")).toBe(tab);
      let text = "";
      let before = "";
      let pieces = 0;
      for await (const chunk of stream) {
        const piece = chunk.choices[0]?.delta?.content ?? "";
        text += piece;
        if (piece) pieces++;
        // the tab goes away after a few tokens of its own
        if (pieces >= 6 && !p.page.isClosed()) {
          before = text;
          daemon.resume();
          await waitFor("the native node back", () => coordinator.fleet.get(daemon.nodeId)?.accepting);
          await p.context.close();
        }
      }
      expect(coordinator.fleet.get(tab)).toBeUndefined();
      const uninterrupted = await fetch(`${native.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${native.apiKey}` },
        body: JSON.stringify(request),
      }).then((r) => r.json() as Promise<{ choices: { message: { content: string } }[] }>);
      process.stderr.write(`continued: ${JSON.stringify(before)} | ${JSON.stringify(text.slice(before.length))}\n`);
      expect(text.startsWith(before)).toBe(true);
      expect(text).toBe(uninterrupted.choices[0]?.message.content);
    } finally {
      await daemon.stop();
      await nativePaths.cleanup();
    }
  }, 300_000);

  it("with WebGPU on (SwiftShader here): the page reports the adapter and why llama.cpp cannot use it, and serves on WebAssembly", async () => {
    const gpuBrowser = await launchBrowser({ webgpu: true });
    try {
      const w = wallet(devWallet(11));
      const p = await openPortal(gpuBrowser, `${coordinator.url}/contribute#token=${browserLinkToken(joinToken)}`, w);
      portals.push(p);
      // what llama.cpp's WebGPU backend asks of the adapter, straight from the browser
      const f16 = await p.page.evaluate(async () => {
        const gpu = (
          navigator as Navigator & { gpu?: { requestAdapter(): Promise<{ requestDevice(d: unknown): Promise<unknown> } | null> } }
        ).gpu;
        const adapter = await gpu?.requestAdapter();
        return adapter
          ? adapter.requestDevice({ requiredFeatures: ["shader-f16"] }).then(
              () => "ok",
              (e: Error) => e.message,
            )
          : "no adapter";
      });
      process.stderr.write(`WebGPU shader-f16 device: ${f16}\n`);
      await p.page.getByRole("button", { name: "Connect wallet" }).click();
      await p.page.getByRole("button", { name: "Start" }).click();
      await waitFor("the tab to serve", async () => ((await state(p)) === "serving" ? true : undefined), 180_000, 250);
      const report = (await p.page.getByTestId("node-browser").textContent()) ?? "";
      process.stderr.write(`page reports: ${report}\n`);
      expect(report).toMatch(/WebGPU adapter: google swiftshader \(software fallback\)/);
      expect(report).toContain("lacks shader-f16");
      expect(await p.page.getByTestId("node-engine").textContent()).toMatch(/^WebAssembly/);
      const node = await waitFor("the tab in the fleet", () =>
        coordinator.fleet.list().find((n) => n.capabilities?.gpu?.includes("swiftshader")),
      );
      expect(node.capabilities?.engineVariant).toBe("wllama-wasm");
      // the capability report the coordinator keeps: the adapter, its limits, and why WebGPU did not run
      expect(node.capabilities?.browser).toMatchObject({
        backend: "wasm",
        crossOriginIsolated: true,
        adapter: { vendor: "google", architecture: "swiftshader", isFallbackAdapter: true, shaderF16: false },
        webgpuUnusable: expect.stringContaining("shader-f16"),
      });
      expect(node.capabilities?.browser?.adapter?.maxBufferSize).toBeGreaterThan(0);
      const chat = await client.chat.completions.create(REQUEST).withResponse();
      expect(chat.response.headers.get("x-sharedllm-node")).toBe(node.id);
      expect(chat.data.choices[0]?.message.content).toBe((await nativeAnswer()).text);
      await p.context.close();
    } finally {
      await gpuBrowser.close();
    }
  }, 300_000);

  it("refuses a corrupted model file with a clear message and loads nothing", async () => {
    const p = await contribute(wallet(devWallet(8)), {
      before: async (portal) => {
        // what a broken mirror or a tampering proxy would send: bytes that are not the file named
        await portal.page.route("**/v1/blobs/**", (route) =>
          route.fulfill({ status: 200, contentType: "application/octet-stream", body: randomBytes(64 * 1024) }),
        );
      },
    });
    await waitFor("the refusal", async () => ((await state(p)) === "failed" ? true : undefined), 120_000, 250);
    const alert = await p.page.getByRole("alert").textContent();
    expect(alert).toContain("is corrupt");
    expect(alert).toContain("Nothing was loaded");
    expect(await p.page.getByTestId("node-engine").textContent()).toBe("—");
    expect(coordinator.fleet.list().filter((n) => n.engine.startsWith("wllama"))).toEqual([]);
    await p.screenshot("contribute-corrupt");
  }, 180_000);

  it("a coordinator with --browser-nodes off refuses a tab, join link or not, and serves no model file", async () => {
    const offDb = await testDatabase();
    const off = await startCoordinator({
      host: "127.0.0.1",
      port: 0,
      ...offDb,
      joinToken,
      logger: quietLogger(),
      ledger: chain.ledgerOptions(),
    });
    try {
      const p = await openPortal(browser, `${off.url}/contribute#token=${browserLinkToken(joinToken)}`, wallet(devWallet(12)));
      portals.push(p);
      await p.page.getByRole("button", { name: "Connect wallet" }).click();
      await p.page.getByRole("button", { name: "Start" }).click();
      await waitFor("the refusal", async () => ((await state(p)) === "failed" ? true : undefined), 30_000, 100);
      expect(await p.page.getByRole("alert").textContent()).toContain(
        "takes no browser nodes (its operator runs it with --browser-nodes off)",
      );
      expect((await fetch(`${off.url}/v1/blobs/${DEFAULT_MODEL.sha256}`)).status).toBe(404);
      await p.context.close();
    } finally {
      await off.close();
      await offDb.cleanup();
    }
  }, 60_000);

  it("without the site's join link a tab is refused, with what to do", async () => {
    const p = await contribute(wallet(devWallet(9)), { link: false });
    await waitFor("the refusal", async () => ((await state(p)) === "failed" ? true : undefined), 30_000, 100);
    expect(await p.page.getByRole("alert").textContent()).toContain("only through its join link");
  }, 60_000);
});
