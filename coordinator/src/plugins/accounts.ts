/**
 * Wallet accounts: Sign-In with Ethereum (EIP-4361) gives a session; a session makes API keys
 * bound to its wallet (the secret is shown once, stored as sha256); the account and earnings
 * views say what a wallet can spend, what its nodes earned, and the proof a claim needs.
 */

import { randomBytes, randomUUID } from "node:crypto";
import {
  type AccountResponse,
  ApiError,
  type ApiKeysResponse,
  type EarningsResponse,
  KEY_POLICIES,
  type LedgerResponse,
  type NewApiKeyResponse,
  type TokenPrice,
} from "@sharedllm/protocol";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { sql } from "kysely";
import { type Address, getAddress, type Hex, isAddress } from "viem";
import { generateSiweNonce, parseSiweMessage, verifySiweMessage } from "viem/siwe";
import { z } from "zod";
import type { ApiKeyVerifier } from "../apiKeys.js";
import { auditStanding } from "../audits/audits.js";
import { bearerToken, hashSecret } from "../credentials.js";
import type { Db } from "../db/database.js";
import type { LedgerChain } from "../ledger/chain.js";
import type { Metering } from "../ledger/metering.js";
import type { Settler } from "../ledger/settlement.js";

export interface AccountsPluginOptions {
  db: Db;
  keys: ApiKeyVerifier;
  chain: LedgerChain;
  metering: Metering;
  settler: Settler;
  /** the origins users reach this coordinator at; a sign-in message must name one (domain and URI) */
  publicOrigins: () => readonly string[];
  /** sign-in nonces (and sign-in attempts) one client address may ask for per minute */
  signInsPerMinute: number;
}

const NONCE_TTL_MS = 5 * 60_000;
/** Sign-ins in progress at once, all clients together: a bound on the rows anonymous callers can make. */
const MAX_OUTSTANDING_NONCES = 10_000;
const SESSION_TTL_MS = 7 * 24 * 3600_000;
const SESSION_PREFIX = "sess_";

export const loginSchema = z.object({ message: z.string().min(1).max(4096), signature: z.string().regex(/^0x[0-9a-fA-F]+$/) });
export const newKeySchema = z.object({ name: z.string().trim().min(1).max(100), policy: z.enum(KEY_POLICIES).optional() }).strict();

export async function accountsPlugin(app: FastifyInstance, o: AccountsPluginOptions): Promise<void> {
  /** The wallet behind a session token (or, with `allowApiKey`, an API key's owner). */
  async function wallet(req: FastifyRequest, allowApiKey = false): Promise<Address> {
    const token = bearerToken(req.headers.authorization);
    if (!token) throw new ApiError("missing_api_key", "sign in first: send the session token as 'Authorization: Bearer sess_...'");
    if (token.startsWith(SESSION_PREFIX)) {
      const row = await o.db
        .selectFrom("web_sessions")
        .select("address")
        .where("token_hash", "=", hashSecret(token))
        .where("expires_at", ">", new Date())
        .executeTakeFirst();
      if (row) return getAddress(row.address);
      throw new ApiError("invalid_api_key", "the session has expired or was signed out; sign in again");
    }
    const key = allowApiKey ? await o.keys.verify(token) : undefined;
    if (key?.owner) return getAddress(key.owner);
    throw new ApiError("invalid_api_key", allowApiKey ? "not a valid session token or wallet-bound API key" : "not a valid session token");
  }

  app.get(
    "/v1/ledger",
    async (): Promise<LedgerResponse> => ({
      chainId: o.chain.chainId,
      ledger: o.chain.ledger,
      coordinator: o.chain.coordinator,
      rpcUrl: o.chain.publicRpcUrl,
      pricing: {
        default: priceJson(o.metering.pricing.default),
        models: Object.fromEntries(Object.entries(o.metering.pricing.models ?? {}).map(([m, p]) => [m, priceJson(p)])),
      },
    }),
  );

  const signInLimit = { config: { rateLimit: { max: o.signInsPerMinute, timeWindow: 60_000 } } };

  app.get("/v1/auth/nonce", signInLimit, async () => {
    const nonce = generateSiweNonce();
    await o.db.deleteFrom("siwe_nonces").where("expires_at", "<", new Date()).execute();
    const { n } = await o.db
      .selectFrom("siwe_nonces")
      .select((eb) => eb.fn.countAll().as("n"))
      .executeTakeFirstOrThrow();
    if (Number(n) >= MAX_OUTSTANDING_NONCES) {
      throw new ApiError("rate_limit_exceeded", "too many sign-ins are in progress on this coordinator; try again in a few minutes");
    }
    await o.db
      .insertInto("siwe_nonces")
      .values({ nonce, expires_at: new Date(Date.now() + NONCE_TTL_MS) })
      .execute();
    return { nonce, chainId: o.chain.chainId };
  });

  app.post("/v1/auth/login", signInLimit, async (req) => {
    const body = loginSchema.safeParse(req.body);
    if (!body.success) throw new ApiError("invalid_request", "send { message, signature }: an EIP-4361 message and the wallet's signature");
    const message = parseSiweMessage(body.data.message);
    if (!message.address || !message.nonce) throw new ApiError("invalid_request", "not an EIP-4361 sign-in message");
    // the wallet showed its owner the domain and URI: they must be this coordinator's, whatever Host the request names
    const origin = o.publicOrigins().find((x) => new URL(x).host === message.domain);
    if (!origin || !message.uri || !sameOrigin(message.uri, origin)) {
      throw new ApiError(
        "invalid_api_key",
        `the sign-in message names ${message.domain ?? "no domain"} (${message.uri ?? "no URI"}); this coordinator is ${o.publicOrigins().join(" or ")}`,
      );
    }
    if (message.chainId !== o.chain.chainId) {
      throw new ApiError("invalid_request", `sign in on chain ${o.chain.chainId}; the message names chain ${message.chainId}`);
    }
    // the nonce is used up whatever happens next: a signature can be tried once
    // (returning, not numDeletedRows: PGlite does not report affected rows)
    const used = await o.db
      .deleteFrom("siwe_nonces")
      .where("nonce", "=", message.nonce)
      .where("expires_at", ">", new Date())
      .returning("nonce")
      .executeTakeFirst();
    if (!used) throw new ApiError("invalid_api_key", "the sign-in nonce is unknown, used or expired; ask for a new one");
    const ok = await verifySiweMessage(o.chain.public, {
      message: body.data.message,
      signature: body.data.signature as Hex,
      domain: message.domain,
      nonce: message.nonce,
    }).catch(() => false);
    if (!ok) throw new ApiError("invalid_api_key", "the signature or the message (not expired, not before its time) does not check out");
    const token = `${SESSION_PREFIX}${randomBytes(32).toString("base64url")}`;
    const expiresAt = new Date(Date.now() + SESSION_TTL_MS);
    const address = getAddress(message.address);
    await o.db
      .insertInto("web_sessions")
      .values({ token_hash: hashSecret(token), address: address.toLowerCase(), expires_at: expiresAt })
      .execute();
    req.log.info({ address }, "wallet signed in");
    return { token, address, expiresAt: expiresAt.toISOString() };
  });

  app.get("/v1/auth/session", async (req) => ({ address: await wallet(req) }));

  app.post("/v1/auth/logout", async (req) => {
    await wallet(req);
    await o.db
      .deleteFrom("web_sessions")
      .where("token_hash", "=", hashSecret(bearerToken(req.headers.authorization) as string))
      .execute();
    return { signedOut: true };
  });

  app.post("/v1/keys", async (req, reply): Promise<NewApiKeyResponse> => {
    const address = await wallet(req);
    const body = newKeySchema.safeParse(req.body ?? {});
    if (!body.success) {
      throw new ApiError(
        "invalid_request",
        `send { name, policy? }: a label for the key, 1-100 characters; policy one of ${KEY_POLICIES.join(", ")}`,
      );
    }
    const secret = `sk-${randomBytes(32).toString("base64url")}`;
    const id = `key_${randomUUID()}`;
    const policy = body.data.policy ?? "any";
    await o.db
      .insertInto("api_keys")
      .values({ id, name: body.data.name, key_hash: hashSecret(secret), owner_address: address.toLowerCase(), policy })
      .execute();
    reply.code(201);
    return { id, name: body.data.name, key: secret, owner: address, policy };
  });

  app.get("/v1/keys", async (req): Promise<ApiKeysResponse> => {
    const address = await wallet(req);
    const rows = await o.db
      .selectFrom("api_keys as k")
      .leftJoin("jobs as j", "j.api_key_id", "k.id")
      .leftJoin("ledger_entries as c", (join) => join.onRef("c.job_id", "=", "j.id").on("c.kind", "=", "charge"))
      .select([
        "k.id",
        "k.name",
        "k.created_at",
        "k.revoked_at",
        sql<string>`count(j.id)`.as("requests"),
        sql<string | null>`sum(j.prompt_tokens)`.as("prompt_tokens"),
        sql<string | null>`sum(j.completion_tokens)`.as("completion_tokens"),
        sql<string | null>`sum(c.amount)`.as("credits"),
      ])
      .where("k.owner_address", "=", address.toLowerCase())
      .groupBy(["k.id", "k.name", "k.created_at", "k.revoked_at"])
      .orderBy("k.created_at", "desc")
      .execute();
    return {
      data: rows.map((r) => ({
        id: r.id,
        name: r.name,
        createdAt: new Date(r.created_at).toISOString(),
        revokedAt: r.revoked_at ? new Date(r.revoked_at).toISOString() : null,
        usage: {
          requests: Number(r.requests),
          promptTokens: Number(r.prompt_tokens ?? 0),
          completionTokens: Number(r.completion_tokens ?? 0),
          credits: r.credits ?? "0",
        },
      })),
    };
  });

  app.delete<{ Params: { id: string } }>("/v1/keys/:id", async (req) => {
    const address = await wallet(req);
    const res = await o.db
      .updateTable("api_keys")
      .set({ revoked_at: new Date() })
      .where("id", "=", req.params.id)
      .where("owner_address", "=", address.toLowerCase())
      .where("revoked_at", "is", null)
      .returning("id")
      .executeTakeFirst();
    if (!res) throw new ApiError("not_found", `no active key ${req.params.id} belongs to ${address}`);
    o.keys.forget();
    return { id: req.params.id, revoked: true };
  });

  app.get("/v1/account", async (req): Promise<AccountResponse> => {
    const address = await wallet(req, true);
    const b = await o.metering.balance(address);
    return {
      address,
      deposited: b.deposited.toString(),
      pendingWithdrawal: b.pendingWithdrawal.toString(),
      settledSpent: b.settledSpent.toString(),
      charged: b.charged.toString(),
      held: b.held.toString(),
      available: b.available.toString(),
    };
  });

  /** What a node earned here, what is settled, and the proof to claim it (public: it is on chain anyway). */
  app.get<{ Params: { address: string } }>("/v1/earnings/:address", async (req): Promise<EarningsResponse> => {
    if (!isAddress(req.params.address)) throw new ApiError("invalid_request", "not an address", { param: "address" });
    const address = getAddress(req.params.address);
    // earnings the settler set aside (a job's earnings above its charge) are never paid: not counted
    const setAside = sql<boolean>`exists (select 1 from set_aside_entries s where s.entry_id = ledger_entries.id)`;
    const { earned, withheld } = await o.db
      .selectFrom("ledger_entries")
      .select([
        sql<string | null>`sum(amount) filter (where not ${setAside})`.as("earned"),
        sql<string | null>`sum(amount) filter (where ${setAside})`.as("withheld"),
      ])
      .where("address", "=", address.toLowerCase())
      .where("kind", "=", "earn")
      .executeTakeFirstOrThrow();
    const settled = await o.settler.settledEarnings(address);
    const claimed = await o.chain.claimed(address);
    const days = await o.db
      .selectFrom("ledger_entries")
      .select([sql<string>`to_char(date_trunc('day', created_at), 'YYYY-MM-DD')`.as("day"), sql<string>`sum(amount)`.as("credits")])
      .where("address", "=", address.toLowerCase())
      .where("kind", "=", "earn")
      .where(sql<boolean>`not ${setAside}`)
      .groupBy(sql`date_trunc('day', created_at)`)
      .orderBy(sql`date_trunc('day', created_at)`)
      .execute();
    // the jobs this node was paid for (the head of a split and each member sign a receipt for the same
    // job), and those of the browser nodes it delegated to as a wallet (their receipts pay it)
    const served = await o.db
      .selectFrom("receipts")
      .select([
        sql<string>`count(*)`.as("jobs"),
        sql<string | null>`sum((receipt::json->>'promptTokens')::numeric)`.as("prompt_tokens"),
        sql<string | null>`sum((receipt::json->>'completionTokens')::numeric)`.as("completion_tokens"),
      ])
      .where((eb) =>
        eb.or([
          eb("node_address", "=", address.toLowerCase()),
          eb("node_address", "in", eb.selectFrom("browser_delegations").select("session_key").where("wallet", "=", address.toLowerCase())),
        ]),
      )
      .where("status", "=", "accepted")
      .executeTakeFirstOrThrow();
    const settledAmount = settled?.cumulative ?? 0n;
    return {
      address,
      coordinator: o.chain.coordinator,
      ledger: o.chain.ledger,
      chainId: o.chain.chainId,
      earned: earned ?? "0",
      pending: (BigInt(earned ?? 0) - settledAmount).toString(),
      settled: settledAmount.toString(),
      claimed: claimed.toString(),
      claimable: (settledAmount > claimed ? settledAmount - claimed : 0n).toString(),
      setAside: withheld ?? "0",
      claim: settled
        ? { batchId: settled.batchId, cumulative: settled.cumulative.toString(), proof: settled.proof, root: settled.root }
        : null,
      byDay: days,
      served: {
        jobs: Number(served.jobs),
        promptTokens: Number(served.prompt_tokens ?? 0),
        completionTokens: Number(served.completion_tokens ?? 0),
      },
      audits: await auditStanding(o.db, address),
    };
  });
}

function sameOrigin(uri: string, origin: string): boolean {
  try {
    return new URL(uri).origin === origin;
  } catch {
    return false;
  }
}

function priceJson(p: { prompt: bigint; completion: bigint }): TokenPrice {
  return { prompt: p.prompt.toString(), completion: p.completion.toString() };
}
