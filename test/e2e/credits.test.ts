/**
 * Credits end to end, on the real parts: the local EVM chain with the real contracts, a coordinator
 * with the ledger, a real node daemon serving the default model. A wallet deposits, signs in with
 * Ethereum, gets an API key and chats; the node signs receipts; a batch settles on chain; the node
 * claims with `sharedllm credits claim`; chain and journal agree to the smallest unit.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { receiptJobId } from "@sharedllm/protocol";
import OpenAI from "openai";
import { type Address, getAddress, toHex } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { runCli, tempPaths, waitFor } from "../helpers.ts";
import { MODEL, type System, startSystem } from "../system.ts";

let chain: TestChain;
let sys: System;

const cli = (args: string[], home: string, env: NodeJS.ProcessEnv = {}) => runCli(args, { SHAREDLLM_HOME: home, ...env });

async function account(session: string) {
  const res = await fetch(`${sys.coordinator.url}/v1/account`, { headers: { authorization: `Bearer ${session}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as { available: string; charged: string; held: string; deposited: string };
}

beforeAll(async () => {
  chain = await startTestChain();
  sys = await startSystem({ ledger: chain.ledgerOptions() });
  await chain.fund(sys.node.nodeId as Address);
}, 240_000);

afterAll(async () => {
  await sys?.close();
  await chain?.stop();
});

describe("credits on a real chain", () => {
  it("a wallet deposits, signs in, chats; the node's receipts settle and it claims exactly what the journal says", async () => {
    const user = devWallet(5);
    const node = getAddress(sys.node.nodeId);
    await chain.deposit(user, 1_000_000n);
    const session = await signIn(sys.coordinator.url, user, chain.chainId);
    const key = await createKey(sys.coordinator.url, session, "e2e");
    const client = new OpenAI({ baseURL: `${sys.coordinator.url}/v1`, apiKey: key, maxRetries: 0 });

    const before = await account(session);
    expect(before.available).toBe("1000000");
    const usages: { prompt_tokens: number; completion_tokens: number }[] = [];
    const chat = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Name a colour." }],
      max_tokens: 12,
      temperature: 0,
    });
    usages.push(chat.usage as (typeof usages)[number]);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Count to five." }],
      max_tokens: 16,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? "";
      if (chunk.usage) usages.push(chunk.usage);
    }
    expect(text.length).toBeGreaterThan(0);
    expect(usages).toHaveLength(2);
    // default price: 1 credit per prompt token, 2 per completion token
    const cost = usages.reduce((sum, u) => sum + BigInt(u.prompt_tokens) + 2n * BigInt(u.completion_tokens), 0n);

    const after = await account(session);
    expect(BigInt(after.charged)).toBe(cost);
    expect(after.held).toBe("0");
    expect(BigInt(after.available)).toBe(1_000_000n - cost);

    // the key's usage history
    const keys = (await (await fetch(`${sys.coordinator.url}/v1/keys`, { headers: { authorization: `Bearer ${session}` } })).json()) as {
      data: { name: string; usage: { requests: number; credits: string } }[];
    };
    expect(keys.data[0]).toMatchObject({ name: "e2e", usage: { requests: 2, credits: cost.toString() } });

    // the node signed both receipts; its earnings settle on chain
    await waitFor("both receipts accepted", async () => {
      const rows = await sys.coordinator.db
        .selectFrom("receipts")
        .select(["status", "reason"])
        .where("node_address", "=", node.toLowerCase())
        .execute();
      expect(rows.filter((r) => r.status === "rejected")).toEqual([]);
      return rows.length === 2;
    });
    expect(await sys.journal(node, "earn")).toBe(cost);
    const earnings = await waitFor(
      "the earnings to settle",
      async () => {
        const e = (await (await fetch(`${sys.coordinator.url}/v1/earnings/${node}`)).json()) as { claimable: string; earned: string };
        return e.claimable === cost.toString() ? e : undefined;
      },
      30_000,
      100,
    );
    expect(earnings.earned).toBe(cost.toString());

    const shown = await cli(["credits", "--coordinator", sys.coordinator.url], sys.paths.home);
    expect(shown.stderr).toBe("");
    expect(shown.stdout).toMatch(new RegExp(`claimable:\\s+${cost}`));
    // the node claims its earnings and puts them into escrow to pay for its own API use
    const claimed = await cli(["credits", "claim", "--deposit", "--coordinator", sys.coordinator.url], sys.paths.home);
    expect(claimed.code, claimed.stderr).toBe(0);
    expect(claimed.stdout).toContain(`claimed ${cost} credits`);
    expect(claimed.stdout).toContain(`deposited ${cost} credits into escrow`);

    // chain == journal, exactly
    expect((await chain.escrow(node)).deposited).toBe(await sys.journal(node, "earn"));
    expect(await chain.credits(node)).toBe(0n);
    expect((await chain.escrow(user.address)).spent).toBe(await sys.journal(user.address, "charge"));
    const s = await chain.settlement();
    expect(s.totalClaimed).toBe(s.totalEarnings);
    expect(s.totalSpent).toBe(cost);
    // claiming again finds nothing
    const again = await cli(["credits", "claim", "--coordinator", sys.coordinator.url], sys.paths.home);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("nothing to claim yet");

    // an API key for the node's own wallet spends what it earned
    const nodeKey = await cli(["credits", "api-key", "--coordinator", sys.coordinator.url], sys.paths.home);
    expect(nodeKey.code, nodeKey.stderr).toBe(0);
    const own = new OpenAI({ baseURL: `${sys.coordinator.url}/v1`, apiKey: nodeKey.stdout.trim(), maxRetries: 0 });
    const reply = await own.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }], max_tokens: 1 });
    const ownCost = BigInt(reply.usage?.prompt_tokens ?? 0) + 2n * BigInt(reply.usage?.completion_tokens ?? 0);
    const mine = (await (
      await fetch(`${sys.coordinator.url}/v1/account`, { headers: { authorization: `Bearer ${nodeKey.stdout.trim()}` } })
    ).json()) as {
      available: string;
      charged: string;
    };
    expect(BigInt(mine.charged)).toBe(ownCost);
    expect(BigInt(mine.available)).toBe(cost - ownCost);
  });

  it("llama-server's own length fields cannot outrun the hold: the engine stops at max_tokens", async () => {
    const user = devWallet(9);
    await chain.deposit(user, 100_000n);
    const session = await signIn(sys.coordinator.url, user, chain.chainId);
    const key = await createKey(sys.coordinator.url, session);
    const res = await fetch(`${sys.coordinator.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "Once upon a time", max_tokens: 3, n_predict: 300, ignore_eos: true, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const { usage } = (await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
    expect(usage.completion_tokens).toBe(3);
    expect(await account(session)).toMatchObject({ held: "0", charged: String(usage.prompt_tokens + 2 * 3) });
  });

  it("a client that reads a stream and goes away before its end pays for the output it was sent and its prompt; the node is paid for it", async () => {
    const user = devWallet(4);
    await chain.deposit(user, 100_000n);
    const session = await signIn(sys.coordinator.url, user, chain.chainId);
    const key = await createKey(sys.coordinator.url, session);
    const ctl = new AbortController();
    const res = await fetch(`${sys.coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: "user", content: "Write a long story." }],
        max_tokens: 400,
        ignore_eos: true,
        stream: true,
      }),
      signal: ctl.signal,
    });
    expect(res.status).toBe(200);
    // the attack: take the output, and leave before the end (and its usage) arrives
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = "";
    let received = 0;
    while (received < 10) {
      const { value } = await reader.read();
      text += Buffer.from(value as Uint8Array).toString();
      received = (text.match(/"content":"/g) ?? []).length;
    }
    ctl.abort();
    const job = await waitFor("the job to be recorded as cancelled", () =>
      sys.coordinator.db
        .selectFrom("jobs")
        .innerJoin("api_keys", "api_keys.id", "jobs.api_key_id")
        .select(["jobs.id", "jobs.status", "jobs.prompt_tokens", "jobs.completion_tokens"])
        .where("api_keys.owner_address", "=", user.address.toLowerCase())
        .where("jobs.status", "=", "cancelled")
        .executeTakeFirst(),
    );
    // every token counted here as sent, at 2 credits each, none of the 400 it did not get; and the
    // prompt, as the node's engine told it when output began: what a whole run of it counts
    const sent = job.completion_tokens ?? 0;
    expect(sent).toBeGreaterThanOrEqual(received);
    expect(sent).toBeLessThan(400);
    const whole = await fetch(`${sys.coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "Write a long story." }], max_tokens: 1 }),
    });
    const prompt = ((await whole.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens;
    expect(prompt).toBeGreaterThan(0);
    expect(job.prompt_tokens).toBe(prompt);
    const cost = prompt + 2 * sent;
    expect(await sys.journal(user.address, "charge")).toBe(BigInt(cost + prompt + 2));
    expect(await account(session)).toMatchObject({ held: "0", charged: String(cost + prompt + 2) });
    // the node signs its receipt for the part it streamed, and earns the charge
    const receipt = await waitFor("the node's receipt for the part", () =>
      sys.coordinator.db
        .selectFrom("receipts")
        .select("receipt")
        .where("job_id", "=", receiptJobId(job.id))
        .where("status", "=", "accepted")
        .executeTakeFirst(),
    );
    expect(JSON.parse(receipt.receipt)).toMatchObject({ completionTokens: sent, promptTokens: prompt, credits: String(cost) });
  });

  it("a request the balance cannot cover gets 402 in OpenAI shape and costs nothing", async () => {
    const poor = devWallet(6);
    await chain.deposit(poor, 10n);
    const session = await signIn(sys.coordinator.url, poor, chain.chainId);
    const key = await createKey(sys.coordinator.url, session);
    const res = await fetch(`${sys.coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "Write a long story." }], max_tokens: 200 }),
    });
    expect(res.status).toBe(402);
    const body = (await res.json()) as { error: { code: string; type: string; message: string } };
    expect(body.error).toMatchObject({ code: "insufficient_credits", type: "insufficient_quota" });
    expect(body.error.message).toContain("10 are available");
    expect(await account(session)).toMatchObject({ available: "10", charged: "0", held: "0" });
    expect(await sys.journal(poor.address, "hold")).toBe(0n);
    const jobs = await sys.coordinator.db
      .selectFrom("jobs")
      .innerJoin("api_keys", "api_keys.id", "jobs.api_key_id")
      .select("jobs.id")
      .where("api_keys.owner_address", "=", poor.address.toLowerCase())
      .execute();
    expect(jobs).toEqual([]);
  });

  it("deploys the contracts to a chain by RPC URL with the deployer key from the environment, and records the deployment", async () => {
    const out = await tempPaths("sharedllm-deploy-");
    try {
      const missing = await cli(["contracts", "deploy", "--rpc-url", chain.rpcUrl, "--out", out.home], out.home);
      expect(missing.code).toBe(1);
      expect(missing.stderr).toContain("SHAREDLLM_DEPLOYER_KEY");
      const key = toHex(devWallet(3).getHdKey().privateKey as Uint8Array);
      const deployed = await cli(
        ["contracts", "deploy", "--rpc-url", chain.rpcUrl, "--out", out.home, "--coordinator", chain.coordinator.address],
        out.home,
        {
          SHAREDLLM_DEPLOYER_KEY: key,
        },
      );
      expect(deployed.code, deployed.stderr).toBe(0);
      expect(deployed.stdout + deployed.stderr).not.toContain(key.slice(2));
      const record = JSON.parse(await readFile(join(out.home, `${chain.chainId}.json`), "utf8")) as {
        chainId: number;
        deployer: string;
        contracts: { CreditLedger: Address };
      };
      expect(record).toMatchObject({ chainId: chain.chainId, deployer: devWallet(3).address });
      expect(deployed.stdout).toContain(record.contracts.CreditLedger);
      // a coordinator connects to it
      const code = await chain.publicClient.getCode({ address: record.contracts.CreditLedger });
      expect(code?.length).toBeGreaterThan(1000);
    } finally {
      await out.cleanup();
    }
  });

  it("refuses sign-in with a replayed nonce, a wrong domain or another wallet's signature", async () => {
    const user = devWallet(7);
    const url = sys.coordinator.url;
    const login = (message: string, signature: string) =>
      fetch(`${url}/v1/auth/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ message, signature }),
      });
    const { createSiweMessage } = await import("viem/siwe");
    const fresh = async (domain = new URL(url).host) => {
      const { nonce } = (await (await fetch(`${url}/v1/auth/nonce`)).json()) as { nonce: string };
      return createSiweMessage({ address: user.address, chainId: chain.chainId, domain, nonce, uri: url, version: "1" });
    };
    const good = await fresh();
    expect((await login(good, await user.signMessage({ message: good }))).status).toBe(200);
    expect((await login(good, await user.signMessage({ message: good }))).status).toBe(401); // nonce used
    const phished = await fresh("evil.example");
    expect((await login(phished, await user.signMessage({ message: phished }))).status).toBe(401);
    const other = await fresh();
    expect((await login(other, await devWallet(8).signMessage({ message: other }))).status).toBe(401);
    // no session: no keys
    const res = await fetch(`${url}/v1/keys`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    expect(res.status).toBe(401);
  });
});
