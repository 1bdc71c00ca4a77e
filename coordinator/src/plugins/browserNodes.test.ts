import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BLOBS_PATH,
  BROWSER_REGISTER_PATH,
  type BrowserNodesMode,
  browserRegistrationMessage,
  type Delegation,
  delegationTypedData,
  registrationMessage,
  signSiteRequestWeb,
} from "@sharedllm/protocol";
import { type TestDatabase, testDatabase } from "@sharedllm/testkit";
import Fastify, { type FastifyInstance } from "fastify";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { browserLinkToken } from "../credentials.js";
import { type Db, openDatabase } from "../db/database.js";
import { errorsPlugin } from "../errors.js";
import { type BrowserBlob, browserNodesPlugin } from "./browserNodes.js";

const CHAIN = 31337;
const SITE = "http://127.0.0.1:8080";
const joinToken = randomBytes(32).toString("base64url");
/** the Contribute link's token: derived from the join token, which the link never carries */
const linkToken = browserLinkToken(joinToken);
let dir: string;
let blob: BrowserBlob;
let content: Buffer;
let database: TestDatabase;
let db: Db;
const apps: FastifyInstance[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sharedllm-blobs-"));
  content = randomBytes(100_000);
  const sha256 = createHash("sha256").update(content).digest("hex");
  blob = { id: "tiny", sha256, path: join(dir, `sha256-${sha256}`), sizeBytes: content.length };
  await writeFile(blob.path, content);
  database = await testDatabase();
  db = await openDatabase(database);
});
afterAll(async () => {
  for (const a of apps) await a.close();
  await db?.destroy();
  await database?.cleanup();
  await rm(dir, { recursive: true, force: true });
});

async function app(mode: BrowserNodesMode, chainId: number | null = CHAIN) {
  const a = Fastify();
  apps.push(a);
  await a.register(errorsPlugin);
  await a.register(browserNodesPlugin, {
    db,
    mode,
    joinToken,
    blobs: [blob],
    chainId: chainId ?? undefined,
    publicOrigins: () => [SITE],
    registrationsPerMinute: 1000,
  });
  return a;
}

describe("model blobs by sha256", () => {
  it("serves an allowed model's file whole and by range, named by its sha256, cached for good", async () => {
    const a = await app("token");
    const whole = await a.inject(`${BLOBS_PATH}/${blob.sha256}`);
    expect(whole.statusCode).toBe(200);
    expect(whole.rawPayload.equals(content)).toBe(true);
    expect(whole.headers.etag).toBe(`"${blob.sha256}"`);
    expect(whole.headers["cache-control"]).toBe("public, max-age=31536000, immutable");
    expect(whole.headers["accept-ranges"]).toBe("bytes");
    const part = await a.inject({ url: `${BLOBS_PATH}/${blob.sha256}`, headers: { range: "bytes=10-19" } });
    expect(part.statusCode).toBe(206);
    expect(part.headers["content-range"]).toBe(`bytes 10-19/${content.length}`);
    expect(part.rawPayload.equals(content.subarray(10, 20))).toBe(true);
    const same = await a.inject({ url: `${BLOBS_PATH}/${blob.sha256}`, headers: { "if-none-match": `"${blob.sha256}"` } });
    expect(same.statusCode).toBe(304);
    const resumed = await a.inject({
      url: `${BLOBS_PATH}/${blob.sha256}`,
      headers: { range: "bytes=5-9", "if-range": `"${blob.sha256}"` },
    });
    expect(resumed.statusCode).toBe(206);
    const changed = await a.inject({ url: `${BLOBS_PATH}/${blob.sha256}`, headers: { range: "bytes=5-9", "if-range": '"other"' } });
    expect(changed.statusCode).toBe(200);
    const beyond = await a.inject({ url: `${BLOBS_PATH}/${blob.sha256}`, headers: { range: `bytes=${content.length + 5}-` } });
    expect(beyond.statusCode).toBe(416);
  });

  it("answers 404 for a hash it does not serve, 400 for a malformed one, and serves nothing with browser nodes off", async () => {
    const a = await app("open");
    const unknown = await a.inject(`${BLOBS_PATH}/${"0".repeat(64)}`);
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json().error.message).toContain("no model file");
    for (const bad of ["abc", "../../etc/passwd", "%2e%2e%2fsecrets.json", blob.sha256.toUpperCase(), `${blob.sha256}0`]) {
      const res = await a.inject(`${BLOBS_PATH}/${bad}`);
      expect([400, 404]).toContain(res.statusCode);
      if (res.statusCode === 400) expect(res.json().error.code).toBe("invalid_request");
    }
    expect((await a.inject(`${BLOBS_PATH}/abc`)).statusCode).toBe(400);
    const off = await app("off");
    expect((await off.inject(`${BLOBS_PATH}/${blob.sha256}`)).statusCode).toBe(404);
  });
});

interface Knobs {
  wallet?: PrivateKeyAccount;
  /** who signs the delegation (default: the wallet) */
  signer?: PrivateKeyAccount;
  session?: PrivateKeyAccount;
  /** who signs the registration proof (default: the session key) */
  prover?: PrivateKeyAccount;
  /** the proof's message (default: the browser registration's, for this request) */
  proofMessage?: (p: { session: PrivateKeyAccount; timestamp: string; nonce: string }) => string;
  delegation?: Partial<Delegation>;
  token?: string | null;
}

/** A browser node's registration, as the Contribute page makes it, with knobs to get each part wrong. */
async function registration(k: Knobs = {}) {
  const wallet = k.wallet ?? privateKeyToAccount(generatePrivateKey());
  const session = k.session ?? privateKeyToAccount(generatePrivateKey());
  const d: Delegation = {
    wallet: wallet.address,
    sessionKey: session.address,
    coordinator: SITE,
    chainId: CHAIN,
    expiresAt: Math.floor(Date.now() / 1000) + 3600,
    ...k.delegation,
  };
  const walletSignature = await (k.signer ?? wallet).signTypedData(delegationTypedData(d));
  // the headers first: the proof covers their timestamp and nonce
  const placeholder = await signSiteRequestWeb(k.token === null ? undefined : (k.token ?? linkToken), "POST", BROWSER_REGISTER_PATH, "");
  const timestamp = placeholder["x-sharedllm-timestamp"] as string;
  const nonce = placeholder["x-sharedllm-nonce"] as string;
  const proof = await (k.prover ?? session).signMessage({
    message:
      k.proofMessage?.({ session, timestamp, nonce }) ??
      browserRegistrationMessage({
        sessionKey: session.address,
        wallet: wallet.address,
        coordinator: d.coordinator,
        chainId: d.chainId,
        timestamp,
        nonce,
      }),
  });
  const body = JSON.stringify({ delegation: d, walletSignature, proof });
  const headers = await signSiteRequestWeb(
    k.token === null ? undefined : (k.token ?? linkToken),
    "POST",
    BROWSER_REGISTER_PATH,
    body,
    Number(timestamp),
    nonce,
  );
  return { wallet, session, body, headers };
}

async function register(a: FastifyInstance, k: Knobs = {}) {
  const r = await registration(k);
  const res = await a.inject({
    method: "POST",
    url: BROWSER_REGISTER_PATH,
    headers: { "content-type": "application/json", ...r.headers },
    payload: r.body,
  });
  return { ...r, res, status: res.statusCode, message: (res.json() as { error?: { message: string } }).error?.message ?? "" };
}

describe("browser node registration", () => {
  it("takes a wallet's delegation to a session key: the key is the node, the wallet is recorded to be paid", async () => {
    const a = await app("token");
    const { res, wallet, session } = await register(a);
    expect(res.statusCode).toBe(201);
    const body = res.json();
    expect(body.nodeId).toBe(session.address.toLowerCase());
    expect(body.wallet).toBe(wallet.address.toLowerCase());
    expect(body.models).toEqual([{ id: "tiny", sha256: blob.sha256, sizeBytes: content.length, url: `${BLOBS_PATH}/${blob.sha256}` }]);
    const row = await db.selectFrom("browser_delegations").selectAll().where("session_key", "=", body.nodeId).executeTakeFirstOrThrow();
    expect(row.wallet).toBe(wallet.address.toLowerCase());
    // the control session ends no later than the delegation
    expect(new Date(body.expiresAt).getTime()).toBeLessThanOrEqual(Date.now() + 3600_000);
  });

  it("refuses forged, expired, misdirected and mismatched delegations, writing nothing", async () => {
    const a = await app("token");
    const stranger = privateKeyToAccount(generatePrivateKey());
    const cases: [string, Knobs, number, string][] = [
      ["forged by another key", { signer: stranger }, 401, "not signed by the wallet"],
      ["expired", { delegation: { expiresAt: Math.floor(Date.now() / 1000) - 10 } }, 401, "expired"],
      ["another chain", { delegation: { chainId: 1 } }, 401, "chain 1"],
      ["another site", { delegation: { coordinator: "https://elsewhere.example" } }, 401, "not this site"],
      ["too long", { delegation: { expiresAt: Math.floor(Date.now() / 1000) + 400 * 86400 } }, 400, "at most"],
      ["session key mismatch", { prover: stranger }, 401, "not signed by the delegated session key"],
      ["wrong join link", { token: "not-the-token" }, 401, "join link is wrong"],
      ["no join link", { token: null }, 401, "only through its join link"],
    ];
    for (const [what, knobs, status, text] of cases) {
      const r = await register(a, knobs);
      expect({ what, status: r.status }).toEqual({ what, status });
      expect(r.message, what).toContain(text);
      const row = await db
        .selectFrom("browser_delegations")
        .select("wallet")
        .where("session_key", "=", r.session.address.toLowerCase())
        .executeTakeFirst();
      expect(row, what).toBeUndefined();
    }
  });

  it("in token mode takes the Contribute link's token, not the join token itself", async () => {
    const a = await app("token");
    const withJoinToken = await register(a, { token: joinToken });
    expect(withJoinToken.status).toBe(401);
    expect(withJoinToken.message).toContain("join link is wrong");
    expect((await register(a)).status).toBe(201);
  });

  it("refuses a replayed request, and a session key another wallet already delegated", async () => {
    const a = await app("token");
    const first = await register(a);
    expect(first.status).toBe(201);
    const again = await a.inject({
      method: "POST",
      url: BROWSER_REGISTER_PATH,
      headers: { "content-type": "application/json", ...first.headers },
      payload: first.body,
    });
    expect(again.statusCode).toBe(401);
    const hijack = await register(a, { session: first.session });
    expect(hijack.status).toBe(401);
    expect(hijack.message).toContain("another wallet");
  });

  it("a native node's registration proof, seen at another site, cannot make it a browser node paying a stranger's wallet", async () => {
    const a = await app("open");
    // the proof a native node signs to register (its key, this request's timestamp and nonce)
    const stolen = await register(a, {
      token: null,
      proofMessage: ({ session, timestamp, nonce }) => registrationMessage({ nodeId: session.address.toLowerCase(), timestamp, nonce }),
    });
    expect(stolen.status).toBe(401);
    expect(stolen.message).toContain("not signed by the delegated session key");
    // and a key that is a native node's here is never a browser node's
    const node = privateKeyToAccount(generatePrivateKey());
    const at = new Date();
    await db
      .insertInto("nodes")
      .values({ id: node.address.toLowerCase(), engine: "b1234-cpu", first_seen_at: at, last_seen_at: at })
      .execute();
    const taken = await register(a, { token: null, session: node });
    expect(taken.status).toBe(401);
    expect(taken.message).toContain("native node");
    expect(
      await db
        .selectFrom("browser_delegations")
        .select("session_key")
        .where("session_key", "=", node.address.toLowerCase())
        .executeTakeFirst(),
    ).toBeUndefined();
  });

  it("off refuses every tab; open needs no join link; no ledger means nothing to earn", async () => {
    const off = await register(await app("off"));
    expect(off.status).toBe(403);
    expect(off.message).toContain("--browser-nodes off");
    const open = await register(await app("open"), { token: null });
    expect(open.status).toBe(201);
    const noLedger = await register(await app("open", null), { token: null });
    expect(noLedger.status).toBe(403);
    expect(noLedger.message).toContain("without a ledger");
  });
});
