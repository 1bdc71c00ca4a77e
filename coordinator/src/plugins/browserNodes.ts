/**
 * Browser nodes (docs/browser-node.md): model blobs by sha256 for the tabs
 * (`GET /v1/blobs/<sha256>`, ranges, immutable), and their registration
 * (`POST /v1/nodes/register-browser`): a wallet's EIP-712 delegation to the tab's session key,
 * for this site and this chain, not expired, and the session key's proof over the request's
 * nonce. `--browser-nodes` decides who may join: nobody (off), holders of the site's join link
 * (token: the request carries the join token's HMAC, as a native node's does), or any wallet
 * (open). A browser node gets only the models allowed for browser nodes, is never an auditor or
 * a cluster member, and what it earns is credited to the delegating wallet (ledger/receipts.ts).
 */
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { basename, dirname } from "node:path";
import fastifyStatic from "@fastify/static";
import {
  ApiError,
  BLOBS_PATH,
  BROWSER_REGISTER_PATH,
  type BrowserModel,
  type BrowserNodesMode,
  type BrowserRegisterResponse,
  browserRegisterRequestSchema,
  browserRegistrationMessage,
  delegationTypedData,
  MAX_DELEGATION_SECONDS,
} from "@sharedllm/protocol";
import { NonceCache, SITE_AUTH_HEADERS, SITE_AUTH_WINDOW_MS, verifySiteRequest } from "@sharedllm/protocol/node";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { type Address, type Hex, verifyMessage, verifyTypedData } from "viem";
import { browserLinkToken, hashSecret } from "../credentials.js";
import type { Db } from "../db/database.js";

/** A model file browser nodes may fetch: a model of this machine's cache, allowed for browser nodes. */
export interface BrowserBlob {
  id: string;
  sha256: string;
  /** the file on this machine */
  path: string;
  sizeBytes: number;
}

export interface BrowserNodesOptions {
  db: Db;
  mode: BrowserNodesMode;
  joinToken: string;
  /** the blobs served, already within the size cap */
  blobs: readonly BrowserBlob[];
  /** the chain delegations must name; undefined when the coordinator runs without a ledger */
  chainId: number | undefined;
  /** the origins this site is reached at: a delegation must name one */
  publicOrigins: () => readonly string[];
  registrationsPerMinute: number;
  sessionTtlMs?: number;
}

const DEFAULT_SESSION_TTL_MS = 12 * 3600_000;
const SHA256 = /^[0-9a-f]{64}$/;

/** The models browser nodes may serve, as a registration answer lists them. */
export function browserModels(blobs: readonly BrowserBlob[]): BrowserModel[] {
  return [...blobs]
    .sort((a, b) => b.sizeBytes - a.sizeBytes)
    .map((b) => ({ id: b.id, sha256: b.sha256, sizeBytes: b.sizeBytes, url: `${BLOBS_PATH}/${b.sha256}` }));
}

/** A browser node's delegation: the wallet paid for its work, and when the delegation ends. */
export async function delegationOf(db: Db, nodeId: string): Promise<{ wallet: Address; expiresAt: Date } | undefined> {
  const row = await db
    .selectFrom("browser_delegations")
    .select(["wallet", "expires_at"])
    .where("session_key", "=", nodeId.toLowerCase())
    .executeTakeFirst();
  return row && { wallet: row.wallet as Address, expiresAt: new Date(row.expires_at) };
}

export async function browserNodesPlugin(app: FastifyInstance, o: BrowserNodesOptions): Promise<void> {
  const bySha = new Map(o.blobs.map((b) => [b.sha256, b]));
  // token mode signs with the Contribute link's token, never the join token itself
  const linkToken = browserLinkToken(o.joinToken);
  const dirs = [...new Set(o.blobs.map((b) => dirname(b.path)))];
  await app.register(fastifyStatic, { root: dirs.length ? dirs : [tmpdir()], serve: false });

  app.get<{ Params: { sha256: string } }>(`${BLOBS_PATH}/:sha256`, async (req, reply) => {
    const sha = req.params.sha256;
    if (!SHA256.test(sha)) throw new ApiError("invalid_request", "a blob is named by the sha256 of its file: 64 lower-case hex digits");
    const blob = o.mode === "off" ? undefined : bySha.get(sha);
    if (!blob) throw new ApiError("not_found", `no model file with sha256 ${sha} is served to browser nodes here`);
    // the file never changes under its name: the sha256 is the validator (send's own are off)
    const etag = `"${sha}"`;
    const matches = (h: string | string[] | undefined) =>
      typeof h === "string" && h.split(",").some((t) => t.trim().replace(/^W\//, "") === etag || t.trim() === "*");
    reply.header("etag", etag);
    if (matches(req.headers["if-none-match"])) {
      reply.header("cache-control", "public, max-age=31536000, immutable");
      return reply.code(304).send();
    }
    const ifRange = req.raw.headers["if-range"];
    if (ifRange !== undefined) {
      if (ifRange !== etag) delete req.raw.headers.range;
      delete req.raw.headers["if-range"];
    }
    reply.header("cache-control", "public, max-age=31536000, immutable");
    reply.header("content-type", "application/octet-stream");
    reply.header("cross-origin-resource-policy", "same-origin");
    return reply.sendFile(basename(blob.path), dirname(blob.path), { etag: false, lastModified: false, cacheControl: false });
  });

  const nonces = new NonceCache();
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_req, body, done) => done(null, body));
  app.post(BROWSER_REGISTER_PATH, { config: { rateLimit: { max: o.registrationsPerMinute, timeWindow: 60_000 } } }, async (req, reply) => {
    const refused = (why: string) => {
      req.log.warn({ why, ip: req.ip }, "browser node registration refused");
      return new ApiError("invalid_api_key", `browser node registration refused: ${why}`);
    };
    if (o.mode === "off") {
      throw new ApiError("permission_denied", "this coordinator takes no browser nodes (its operator runs it with --browser-nodes off)");
    }
    if (o.chainId === undefined) {
      throw new ApiError("permission_denied", "this coordinator runs without a ledger, so a browser node could earn nothing here");
    }
    const raw = typeof req.body === "string" ? req.body : "";
    const fresh = checkFresh(req, raw);
    if (!fresh.ok) throw refused(fresh.why);
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      throw new ApiError("invalid_json", "the request body is not valid JSON");
    }
    const parsed = browserRegisterRequestSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new ApiError("invalid_request", `bad browser node registration: ${issue?.message} at ${issue?.path.join(".")}`);
    }
    const { delegation: d, walletSignature, proof } = parsed.data;
    const wallet = d.wallet.toLowerCase() as Address;
    const sessionKey = d.sessionKey.toLowerCase() as Address;
    const now = Date.now();
    if (d.chainId !== o.chainId) throw refused(`the delegation is for chain ${d.chainId}; this coordinator settles on chain ${o.chainId}`);
    const origins = o.publicOrigins();
    if (!origins.includes(d.coordinator)) {
      throw refused(`the delegation is for ${d.coordinator}, not this site (${origins.join(", ")}); sign one for this site`);
    }
    if (d.expiresAt * 1000 <= now) throw refused(`the delegation expired at ${new Date(d.expiresAt * 1000).toISOString()}; sign a new one`);
    if (d.expiresAt * 1000 > now + MAX_DELEGATION_SECONDS * 1000 + SITE_AUTH_WINDOW_MS) {
      throw new ApiError("invalid_request", `a delegation may run at most ${MAX_DELEGATION_SECONDS / 86400} days; sign a shorter one`);
    }
    const signed = await verifyTypedData({
      address: wallet,
      ...delegationTypedData({ sessionKey, coordinator: d.coordinator, chainId: d.chainId, expiresAt: d.expiresAt }),
      signature: walletSignature as Hex,
    }).catch(() => false);
    if (!signed) throw refused("the delegation is not signed by the wallet it names");
    // the session key proves itself for this wallet, site and chain: a native node's proof, seen
    // elsewhere, cannot be replayed here to have its work paid to another wallet
    const message = browserRegistrationMessage({
      sessionKey,
      wallet,
      coordinator: d.coordinator,
      chainId: d.chainId,
      timestamp: String(fresh.timestamp),
      nonce: fresh.nonce,
    });
    const proven = await verifyMessage({ address: sessionKey, message, signature: proof as Hex }).catch(() => false);
    if (!proven) throw refused("the proof is not signed by the delegated session key");
    // a native node's key is never a browser node's
    const native = await o.db
      .selectFrom("nodes")
      .select("id")
      .where("id", "=", sessionKey)
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom("browser_delegations").select("session_key").where("session_key", "=", sessionKey))),
      )
      .executeTakeFirst();
    if (native) throw refused("this key is a native node's here; a browser node needs a session key of its own");
    const excluded = await o.db
      .selectFrom("node_standing")
      .select(["node_id", "excluded_reason"])
      .where("node_id", "in", [sessionKey, wallet])
      .where("excluded_at", "is not", null)
      .executeTakeFirst();
    if (excluded) {
      throw new ApiError(
        "permission_denied",
        `${excluded.node_id} is excluded (${excluded.excluded_reason}); the coordinator's operator must clear it`,
      );
    }

    const sessionToken = randomBytes(32).toString("base64url");
    const at = new Date(now);
    const expiresAt = new Date(Math.min(now + (o.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS), d.expiresAt * 1000));
    await o.db.transaction().execute(async (tx) => {
      await tx.deleteFrom("site_nonces").where("expires_at", "<", at).execute();
      const unused = await tx
        .insertInto("site_nonces")
        .values({ nonce: fresh.nonce, expires_at: new Date(fresh.timestamp + SITE_AUTH_WINDOW_MS) })
        .onConflict((c) => c.column("nonce").doNothing())
        .returning("nonce")
        .executeTakeFirst();
      if (!unused) throw refused("this request was already used");
      // a session key belongs to one wallet for good: its receipts are paid to the wallet that first delegated to it
      const prior = await tx.selectFrom("browser_delegations").select("wallet").where("session_key", "=", sessionKey).executeTakeFirst();
      if (prior && prior.wallet !== wallet) throw refused("this session key was delegated by another wallet; make a new one");
      await tx
        .insertInto("browser_delegations")
        .values({
          session_key: sessionKey,
          wallet,
          coordinator: d.coordinator,
          chain_id: d.chainId,
          expires_at: new Date(d.expiresAt * 1000),
          signature: walletSignature,
        })
        .onConflict((c) => c.column("session_key").doUpdateSet({ expires_at: new Date(d.expiresAt * 1000), signature: walletSignature }))
        .execute();
      await tx
        .insertInto("nodes")
        .values({ id: sessionKey, engine: "browser", first_seen_at: at, last_seen_at: at })
        .onConflict((c) => c.column("id").doUpdateSet({ last_seen_at: at }))
        .execute();
      await tx.deleteFrom("node_sessions").where("node_id", "=", sessionKey).where("expires_at", "<", at).execute();
      await tx
        .insertInto("node_sessions")
        .values({ token_hash: hashSecret(sessionToken), node_id: sessionKey, expires_at: expiresAt })
        .execute();
      await tx
        .insertInto("events")
        .values({ kind: "node.registered", node_id: sessionKey, data: JSON.stringify({ ip: req.ip, browser: true, wallet }) })
        .execute();
    });
    req.log.info({ nodeId: sessionKey, wallet }, "browser node registered");
    const res: BrowserRegisterResponse = {
      nodeId: sessionKey,
      wallet,
      sessionToken,
      expiresAt: expiresAt.toISOString(),
      models: browserModels(o.blobs),
    };
    return reply.code(201).send(res);
  });

  /** The request's timestamp and nonce, fresh and (in token mode) signed with the Contribute link's token. */
  function checkFresh(req: FastifyRequest, raw: string): { ok: true; timestamp: number; nonce: string } | { ok: false; why: string } {
    if (o.mode === "token") {
      const auth = verifySiteRequest(
        linkToken,
        { method: req.method, path: BROWSER_REGISTER_PATH, headers: req.headers, body: raw },
        nonces,
      );
      if (auth.ok) return { ok: true, timestamp: auth.timestamp, nonce: auth.nonce };
      return {
        ok: false,
        why: {
          missing: "this site takes browser nodes only through its join link: open the link its operator shares",
          expired: "the request's timestamp is more than 60 s off; check this computer's clock",
          bad_signature: "the join link is wrong or out of date: ask the site's operator for the current one",
          replayed: "this request was already used",
        }[auth.reason],
      };
    }
    const ts = req.headers[SITE_AUTH_HEADERS.timestamp];
    const nonce = req.headers[SITE_AUTH_HEADERS.nonce];
    if (typeof ts !== "string" || typeof nonce !== "string" || !/^\d{1,16}$/.test(ts) || !/^[0-9a-f]{16,128}$/.test(nonce)) {
      return { ok: false, why: `the request needs ${SITE_AUTH_HEADERS.timestamp} and ${SITE_AUTH_HEADERS.nonce} headers` };
    }
    const timestamp = Number(ts);
    if (Math.abs(Date.now() - timestamp) > SITE_AUTH_WINDOW_MS)
      return { ok: false, why: "the request's timestamp is more than 60 s off; check this computer's clock" };
    if (!nonces.add(nonce, timestamp + SITE_AUTH_WINDOW_MS)) return { ok: false, why: "this request was already used" };
    return { ok: true, timestamp, nonce };
  }
}
