/**
 * Federation foundations with real parts: the dev chain with FederationRegistry, two real
 * coordinators (and a third, unregistered), registered, admitted, endorsed and revoked through
 * the `sharedllm federation` command, signed pings between them over HTTP. PGlite by default,
 * PostgreSQL when DATABASE_URL is set.
 */
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chainClients } from "@sharedllm/cli";
import { DEV_DEPLOYER_KEY, FederationRegistry } from "@sharedllm/contracts";
import { type Coordinator, type PeerCutOff, startCoordinator } from "@sharedllm/coordinator";
import type { FederationResponse, OpenAIErrorBody } from "@sharedllm/protocol";
import type { Account, Address, Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, runCli, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";

const REFRESH_MS = 1_000;
const STALE_AFTER_MS = 3_000;

interface Site {
  name: string;
  home: string;
  key: Hex;
  address: Address;
  database: TestDatabase;
  coordinator: Coordinator;
  port: number;
}

let chain: TestChain;
const sites: Site[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

async function start(s: Omit<Site, "coordinator" | "port">, port = 0): Promise<Coordinator> {
  return startCoordinator({
    host: "127.0.0.1",
    port,
    ...s.database,
    joinToken: randomBytes(32).toString("base64url"),
    logger: quietLogger(),
    federation: { rpcUrl: chain.rpcUrl, registry: chain.registry, privateKey: s.key, refreshMs: REFRESH_MS, staleAfterMs: STALE_AFTER_MS },
  });
}

async function site(name: string): Promise<Site> {
  const paths = await tempPaths(`sharedllm-fed-${name}-`);
  cleanups.push(paths.cleanup);
  const key = generatePrivateKey();
  const address = privateKeyToAccount(key).address.toLowerCase() as Address;
  // the coordinator's key where `sharedllm federation` finds it
  await writeFile(join(paths.home, "coordinator-key.json"), JSON.stringify({ address, privateKey: key }), { mode: 0o600 });
  await chain.fund(address);
  const database = await testDatabase();
  cleanups.push(database.cleanup);
  const partial = { name, home: paths.home, key, address, database };
  const coordinator = await start(partial);
  const s: Site = { ...partial, coordinator, port: Number(new URL(coordinator.url).port) };
  sites.push(s);
  return s;
}

/** `sharedllm federation <args>` in a site's home; fails the test on a non-zero exit. */
async function fed(s: Site, ...args: string[]): Promise<string> {
  const r = await runCli(["federation", ...args, "--chain-rpc-url", chain.rpcUrl, "--registry", chain.registry], {
    SHAREDLLM_HOME: s.home,
  });
  if (r.code !== 0) throw new Error(`sharedllm federation ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

const fedOf = (s: Site) => {
  const f = s.coordinator.federation;
  if (!f) throw new Error(`${s.name} runs without federation`);
  return f;
};

/** Sends a registry transaction straight through viem (quicker than the command when timing matters). */
async function registryTx(account: Account, functionName: string, args: readonly unknown[]) {
  const { publicClient, wallet } = chainClients(chain.rpcUrl, chain.chainId, account);
  const hash = await (wallet as NonNullable<typeof wallet>).writeContract({
    address: chain.registry,
    abi: FederationRegistry.abi,
    functionName,
    args,
  } as never);
  expect((await publicClient.waitForTransactionReceipt({ hash })).status).toBe("success");
}

async function ping(from: Site, to: Site, body: unknown = { hello: to.name }) {
  const res = await fedOf(from).signedFetch(to.address, "POST", "/federation/v1/ping", body);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> & Partial<OpenAIErrorBody> };
}

let a: Site;
let b: Site;
let c: Site;

beforeAll(async () => {
  chain = await startTestChain();
  cleanups.push(() => chain.stop());
  [a, b, c] = await Promise.all([site("a"), site("b"), site("c")]);
}, 180_000);

afterAll(async () => {
  for (const s of sites) await s.coordinator.close().catch(() => undefined);
  for (const clean of cleanups.reverse()) await clean().catch(() => undefined);
});

describe("federation between two sites", () => {
  it("registers both, governance admits A, A endorses B: signed pings pass both ways and GET /v1/federation shows the trust paths", async () => {
    expect(await fed(a, "register", "--url", a.coordinator.url, "--name", "site A", "--contact", "ops@a.example")).toMatch(/registered/);
    await fed(b, "register", "--url", b.coordinator.url, "--name", "site B");
    // B is pending: nobody trusts it yet, and a pending coordinator cannot endorse
    expect(await fed(b, "peers")).toMatch(/not trusted \(pending\)/);
    const refused = await runCli(["federation", "endorse", a.address, "--chain-rpc-url", chain.rpcUrl, "--registry", chain.registry], {
      SHAREDLLM_HOME: b.home,
    });
    expect({ code: refused.code, stderr: refused.stderr }).toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/only a coordinator that governance admitted/),
    });
    await fed(a, "admit", a.address);
    await fed(a, "endorse", b.address);
    expect(await fed(a, "peers")).toMatch(/trusted \(endorsed by this site\)/);
    expect(await fed(a, "status")).toMatch(/admitted/);

    await waitFor("A and B to trust each other", () => fedOf(a).isTrusted(b.address) && fedOf(b).isTrusted(a.address), 10_000);
    const ab = await ping(a, b);
    expect(ab).toEqual({ status: 200, body: { pong: true, from: a.address, to: b.address, body: { hello: "b" } } });
    expect((await ping(b, a)).status).toBe(200);

    const viewA = (await (await fetch(`${a.coordinator.url}/v1/federation`)).json()) as FederationResponse;
    expect(viewA.self).toMatchObject({ address: a.address, status: "admitted", url: a.coordinator.url, keyId: 1 });
    expect(viewA.refreshMs).toBe(REFRESH_MS);
    expect(viewA.peers.find((p) => p.address === b.address)).toMatchObject({
      status: "pending",
      trusted: true,
      trustPath: "endorsed",
      url: b.coordinator.url,
    });
    const viewB = (await (await fetch(`${b.coordinator.url}/v1/federation`)).json()) as FederationResponse;
    expect(viewB.peers.find((p) => p.address === a.address)).toMatchObject({ trusted: true, trustPath: "admitted" });
    expect(JSON.stringify(viewA)).not.toContain(a.key.slice(2));
  });

  it("refuses an unregistered coordinator, an unsigned call and a body changed on the way, with their codes", async () => {
    // C tracks only coordinators it may trust: A, whom governance admitted (B is pending, endorsed by A alone)
    await waitFor("C to read A's admission", () => fedOf(c).peer(a.address));
    expect(fedOf(c).peer(b.address)).toBeUndefined();
    const url = `${b.coordinator.url}/federation/v1/ping`;
    const body = JSON.stringify({ from: "c" });
    const urlA = `${a.coordinator.url}/federation/v1/ping`;
    const asC = await fetch(urlA, {
      method: "POST",
      headers: { ...fedOf(c).sign(a.address, "POST", urlA, body), "content-type": "application/json" },
      body,
    });
    expect(asC.status).toBe(403);
    expect(((await asC.json()) as OpenAIErrorBody).error).toMatchObject({ code: "federation_unknown_peer", type: "permission_error" });

    const unsigned = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body });
    expect(unsigned.status).toBe(401);
    expect(((await unsigned.json()) as OpenAIErrorBody).error.code).toBe("federation_signature_missing");

    const headers = fedOf(a).sign(b.address, "POST", url, body);
    const altered = await fetch(url, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json" },
      body: JSON.stringify({ from: "x" }),
    });
    expect(altered.status).toBe(401);
    expect(((await altered.json()) as OpenAIErrorBody).error.code).toBe("federation_digest_mismatch");
  });

  it("refuses a replayed request, also after the receiving coordinator restarts", async () => {
    const url = `${b.coordinator.url}/federation/v1/ping`;
    const body = JSON.stringify({ once: true });
    const headers = { ...fedOf(a).sign(b.address, "POST", url, body), "content-type": "application/json" };
    const send = () => fetch(url, { method: "POST", headers, body });
    expect((await send()).status).toBe(200);
    const again = await send();
    expect(again.status).toBe(401);
    expect(((await again.json()) as OpenAIErrorBody).error.code).toBe("federation_replayed");

    await b.coordinator.close();
    b.coordinator = await start(b, b.port);
    await waitFor("the restarted B to trust A", () => fedOf(b).isTrusted(a.address), 10_000);
    const afterRestart = await send();
    expect(afterRestart.status).toBe(401);
    expect(((await afterRestart.json()) as OpenAIErrorBody).error.code).toBe("federation_replayed");
    // a fresh signature still passes
    expect((await ping(a, b)).status).toBe(200);
  });

  it("cuts off a peer revoked while trusted within one refresh interval, and says so", async () => {
    const cutOffs: PeerCutOff[] = [];
    fedOf(b).on("peer.untrusted", (e) => cutOffs.push(e));
    expect((await ping(a, b)).status).toBe(200);
    await fed(a, "revoke", a.address);
    const revokedAt = Date.now();
    const refusal = await waitFor(
      "B to refuse the revoked A",
      async () => {
        const r = await ping(a, b);
        return r.status === 200 ? undefined : r;
      },
      REFRESH_MS * 5,
    );
    const took = Date.now() - revokedAt;
    expect(refusal.status).toBe(403);
    expect(refusal.body.error).toMatchObject({ code: "federation_untrusted_peer" });
    // cut off at the next read of the registry: at most one refresh interval away, plus the read
    // itself and a ping, which a loaded machine stretches (runs here measured 1.4-2.6 s)
    expect(took).toBeLessThan(2 * REFRESH_MS + 2_000);
    expect(cutOffs).toEqual([{ peer: a.address, reason: "revoked" }]);
    expect(await fed(b, "peers")).toMatch(/not trusted \(revoked\)/);
  });

  it("refuses a peer whose key expired, at once, and cuts it off at the next refresh", async () => {
    const cutOffs: PeerCutOff[] = [];
    fedOf(b).on("peer.untrusted", (e) => cutOffs.push(e));
    const cutOffsAtA: PeerCutOff[] = [];
    fedOf(a).on("peer.untrusted", (e) => cutOffsAtA.push(e));
    const account = privateKeyToAccount(c.key);
    const validUntil = Math.floor(Date.now() / 1000) + 10;
    await registryTx(account, "register", [`0x${account.publicKey.slice(4)}`, 3, BigInt(validUntil), c.coordinator.url, "{}"]);
    await registryTx(privateKeyToAccount(DEV_DEPLOYER_KEY), "admit", [c.address]);
    // C calls B, so C endorses it: a site tracks a pending peer only once it endorsed it
    await registryTx(account, "endorse", [b.address, true]);
    await waitFor("B to trust C", () => fedOf(b).isTrusted(c.address), 8_000);
    await waitFor("C to read B", () => fedOf(c).peer(b.address), 5_000);
    await waitFor("C to read its registration", () => fedOf(c).self()?.keyId === 3, 5_000);
    const url = `${b.coordinator.url}/federation/v1/ping`;
    const send = () => {
      const body = JSON.stringify({ from: "c" });
      return fetch(url, {
        method: "POST",
        headers: { ...fedOf(c).sign(b.address, "POST", url, body), "content-type": "application/json" },
        body,
      });
    };
    expect((await send()).status).toBe(200);
    const refused = await waitFor(
      "B to refuse C's expired key",
      async () => {
        const res = await send();
        return res.status === 200 ? undefined : res;
      },
      15_000,
    );
    expect(Date.now() / 1000).toBeGreaterThanOrEqual(validUntil);
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as OpenAIErrorBody).error.code).toBe("federation_key_expired");
    await waitFor("B's and A's cut-offs of C", () => cutOffs.length > 0 && cutOffsAtA.length > 0, REFRESH_MS * 3);
    expect(cutOffs).toEqual([{ peer: c.address, reason: "expired" }]);
    expect(cutOffsAtA).toEqual([{ peer: c.address, reason: "expired" }]);
  });

  it("cuts off every peer when the registry cannot be read for too long (fail closed)", async () => {
    expect(fedOf(a).isTrusted(b.address)).toBe(true);
    const cutOffs: PeerCutOff[] = [];
    fedOf(a).on("peer.untrusted", (e) => cutOffs.push(e));
    await chain.stop();
    await waitFor("A to cut B off", () => cutOffs.length > 0, STALE_AFTER_MS + REFRESH_MS * 5);
    expect(cutOffs).toEqual([{ peer: b.address, reason: "registry_unreadable" }]);
    await expect(ping(a, b)).rejects.toThrow(/not trusted by this site: this site has not been able to read/);
    const view = (await (await fetch(`${a.coordinator.url}/v1/federation`)).json()) as FederationResponse;
    expect(view.peers.find((p) => p.address === b.address)).toMatchObject({ trusted: false, distrust: "registry_unreadable" });
  });
});
