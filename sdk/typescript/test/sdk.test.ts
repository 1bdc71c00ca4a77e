/**
 * The SDK against the real parts: a local chain with the real contracts, a coordinator with the
 * ledger and a real node daemon on the default model. The README's examples run as they are
 * written (each ```ts block, its env set, its console.log lines read back), then the state they
 * left is checked through the SDK.
 */
import { readFile, rm, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { SharedLLM, SharedLLMError } from "@sharedllm/sdk";
import { waitFor } from "@sharedllm/testkit";
import { devWallet, startTestChain, type TestChain } from "@sharedllm/testkit/chain";
import { MODEL, type System, startSystem } from "@sharedllm/testkit/system";
import { type Address, toHex } from "viem";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";

let chain: TestChain;
let sys: System;

const README = fileURLToPath(new URL("../README.md", import.meta.url));

/** The README's ```ts blocks, in order. */
async function examples(): Promise<string[]> {
  return [...(await readFile(README, "utf8")).matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string);
}

/** Runs one example as a module with this environment; returns what it logged, one array per console.log. */
async function run(source: string, env: Record<string, string>): Promise<unknown[][]> {
  // beside this file, so that @sharedllm/sdk resolves as it does for a user
  const file = fileURLToPath(new URL(`./.example-${Date.now()}.ts`, import.meta.url));
  await writeFile(file, source);
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  const log = vi.spyOn(console, "log").mockImplementation(() => {});
  try {
    await import(file);
    return log.mock.calls;
  } finally {
    log.mockRestore();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await rm(file, { force: true });
  }
}

const logged = (lines: unknown[][], label: string) => lines.find((l) => l[0] === label)?.slice(1);

beforeAll(async () => {
  chain = await startTestChain();
  sys = await startSystem({ ledger: chain.ledgerOptions() });
  await chain.fund(sys.node.nodeId as Address);
}, 240_000);

afterAll(async () => {
  await sys?.close();
  await chain?.stop();
});

describe("the TypeScript SDK", () => {
  it("runs the README's quick start: sign in, buy credits, a key, a chat, its cost, the key revoked", async () => {
    const user = devWallet(5);
    const [quickstart] = await examples();
    const lines = await run(quickstart as string, {
      SHAREDLLM_URL: sys.coordinator.url,
      SHAREDLLM_MODEL: MODEL,
      WALLET_KEY: toHex(user.getHdKey().privateKey as Uint8Array),
    });
    expect(logged(lines, "available")).toEqual([1_000_000n]);
    expect(String(logged(lines, "reply")?.[0]).length).toBeGreaterThan(0);
    // default price: 1 credit per prompt token, 2 per completion token
    const [cost] = logged(lines, "cost") as [bigint];
    expect(cost).toBeGreaterThan(0n);
    expect(logged(lines, "charged")).toEqual([cost]);
    expect(logged(lines, "key usage")).toEqual([1, cost]);
    expect(logged(lines, "revoked")).toEqual([401, "invalid_api_key"]);

    // the same wallet, signed in again: its balance, the key revoked with what it spent
    const sdk = new SharedLLM({ url: sys.coordinator.url });
    const session = await sdk.signIn(user);
    expect(session.address).toBe(user.address);
    const account = await sdk.account();
    expect(account).toMatchObject({ deposited: 1_000_000n, charged: cost, held: 0n, available: 1_000_000n - cost });
    const [key] = await sdk.listKeys();
    expect(key).toMatchObject({ name: "quickstart", usage: { requests: 1, credits: cost } });
    expect(key?.revokedAt).not.toBeNull();
    expect(await sys.journal(user.address, "charge")).toBe(cost);
    // the README's cost is the default price: 1 credit per prompt token, 2 per completion token
    expect((await sdk.ledger()).pricing.default).toEqual({ prompt: 1n, completion: 2n });
  });

  it("runs the node operators' example: the node claims its settled earnings and deposits them", async () => {
    const node = sys.node.nodeId as Address;
    const earned = await sys.journal(node, "earn");
    expect(earned).toBeGreaterThan(0n);
    const sdk = new SharedLLM({ url: sys.coordinator.url });
    await waitFor("the earnings to settle", async () => (await sdk.earnings(node)).claimable === earned, 30_000, 100);
    const { privateKey } = JSON.parse(await readFile(`${sys.paths.home}/node-key.json`, "utf8")) as { privateKey: string };
    const [, operators] = await examples();
    const lines = await run(operators as string, { SHAREDLLM_URL: sys.coordinator.url, NODE_KEY: privateKey });
    expect(logged(lines, "earned")).toEqual([earned, "claimable", earned]);
    expect(logged(lines, "claimed")).toEqual([earned]);
    expect(logged(lines, "on chain")).toEqual([0n]);
    expect((await chain.escrow(node)).deposited).toBe(earned);
    // claiming again finds nothing
    const after = await sdk.earnings(node);
    expect(after).toMatchObject({ claimed: earned, claimable: 0n });
  });

  it("answers errors as SharedLLMError with the OpenAI-shaped body's fields", async () => {
    const sdk = new SharedLLM({ url: sys.coordinator.url });
    const err = await sdk.createKey("no session").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SharedLLMError);
    expect(err).toMatchObject({ status: 401, code: "missing_api_key", type: "authentication_error" });
    const bad = await sdk.earnings("0xnot" as Address).catch((e: unknown) => e);
    expect(bad).toMatchObject({ status: 400, code: "invalid_request", param: "address" });
    // federation is off on this coordinator: its view is not there
    expect(await sdk.federation().catch((e: unknown) => e)).toMatchObject({ status: 404 });
    const network = await sdk.network();
    expect(network.nodes.map((n) => n.id)).toContain(sys.node.nodeId);
    expect(network.models).toContainEqual({ id: MODEL, nodes: 1 });
    // the typed paths, as they are (with the system's API key)
    const { data } = await new SharedLLM({ url: sys.coordinator.url, token: sys.apiKey }).api.GET("/v1/models");
    expect(data?.data.map((m) => m.id)).toContain(MODEL);
  });
});
