/**
 * Sign-In with Ethereum against a real coordinator on a real dev chain: a message signed on a
 * phishing page does not log in, whatever Host it is sent with; anonymous callers cannot make
 * the coordinator write without bound (sign-in nonces, registrations).
 */

import { randomBytes } from "node:crypto";
import { request } from "node:http";
import { REGISTER_PATH } from "@sharedllm/protocol";
import { quietLogger, type TestDatabase, testDatabase } from "@sharedllm/testkit";
import { devWallet, startTestChain, type TestChain } from "@sharedllm/testkit/chain";
import { createSiweMessage } from "viem/siwe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Coordinator, startCoordinator } from "../coordinator.js";

let chain: TestChain;
let database: TestDatabase;
let c: Coordinator;
beforeAll(async () => {
  chain = await startTestChain();
  database = await testDatabase();
  c = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken: randomBytes(32).toString("base64url"),
    logger: quietLogger(),
    ledger: chain.ledgerOptions(),
    rateLimits: { signIns: 4, registrations: 3 },
  });
});
afterAll(async () => {
  await c?.close();
  await database?.cleanup();
  await chain?.stop();
});

/** The fields of the answers these tests read. */
interface Answer {
  nonce: string;
  address: string;
  error: { message: string; type: string; code: string; param: string | null };
}

/** A real HTTP request whose Host header we choose (fetch will not let us). */
function send(method: string, path: string, o: { host?: string; body?: unknown } = {}): Promise<{ status: number; json: Answer }> {
  const url = new URL(path, c.url);
  const body = o.body === undefined ? undefined : JSON.stringify(o.body);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method,
        headers: { ...(o.host && { host: o.host }), ...(body && { "content-type": "application/json" }) },
      },
      (res) => {
        let text = "";
        res.on("data", (b) => {
          text += b;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const count = async (table: "siwe_nonces" | "web_sessions" | "nodes") =>
  Number(
    (
      await c.db
        .selectFrom(table)
        .select((eb) => eb.fn.countAll().as("n"))
        .executeTakeFirstOrThrow()
    ).n,
  );

describe("Sign-In with Ethereum", () => {
  it("refuses a message signed for a phishing domain even when sent with that Host; a message for this coordinator logs in", async () => {
    const user = devWallet(5);
    const phishing = "llm-portal.example";
    const sessions = await count("web_sessions");
    const { nonce } = (await send("GET", "/v1/auth/nonce", { host: phishing })).json;
    const phished = createSiweMessage({
      address: user.address,
      chainId: chain.chainId,
      domain: phishing,
      uri: `https://${phishing}/`,
      nonce,
      version: "1",
    });
    const stolen = await send("POST", "/v1/auth/login", {
      host: phishing,
      body: { message: phished, signature: await user.signMessage({ message: phished }) },
    });
    expect(stolen.status).toBe(401);
    expect(stolen.json.error.message).toContain(`this coordinator is ${c.url}`);
    expect(await count("web_sessions")).toBe(sessions);

    // the coordinator's own domain with a URI elsewhere is refused too
    const host = new URL(c.url).host;
    const elsewhere = createSiweMessage({
      address: user.address,
      chainId: chain.chainId,
      domain: host,
      uri: `https://${phishing}/`,
      nonce: (await send("GET", "/v1/auth/nonce")).json.nonce,
      version: "1",
    });
    const redirected = await send("POST", "/v1/auth/login", {
      body: { message: elsewhere, signature: await user.signMessage({ message: elsewhere }) },
    });
    expect(redirected.status).toBe(401);

    const good = createSiweMessage({
      address: user.address,
      chainId: chain.chainId,
      domain: host,
      uri: c.url,
      nonce: (await send("GET", "/v1/auth/nonce")).json.nonce,
      version: "1",
    });
    const ok = await send("POST", "/v1/auth/login", { body: { message: good, signature: await user.signMessage({ message: good }) } });
    expect(ok.status).toBe(200);
    expect(ok.json.address).toBe(user.address);
    expect(await count("web_sessions")).toBe(sessions + 1);
  });
});

describe("rate limits", () => {
  it("answers the nonce request over the limit with 429 in the OpenAI error shape and writes no row for it", async () => {
    // the limit is 4 a minute per address; the test above used 3
    const before = await count("siwe_nonces");
    expect((await send("GET", "/v1/auth/nonce")).status).toBe(200);
    const over = await send("GET", "/v1/auth/nonce");
    expect(over.status).toBe(429);
    expect(over.json).toEqual({
      error: {
        message: expect.stringMatching(/too many requests.*try again in \d+ s/),
        type: "requests",
        code: "rate_limit_exceeded",
        param: null,
      },
    });
    expect(await count("siwe_nonces")).toBe(before + 1);
  });

  it("counts registrations per address, signed or not, before checking them", async () => {
    const nodes = await count("nodes");
    const register = () => fetch(c.url + REGISTER_PATH, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    for (let i = 0; i < 3; i++) expect((await register()).status).toBe(401);
    const over = await register();
    expect(over.status).toBe(429);
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe("rate_limit_exceeded");
    expect(await count("nodes")).toBe(nodes);
  });
});
