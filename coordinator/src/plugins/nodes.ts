/**
 * Node registration: a node proves site membership (HMAC under the join token,
 * fresh and used once) and that it holds the key of the address it claims (an
 * EIP-191 signature over the same nonce). It gets a session token for the
 * control channel. Any failure is a 401 that changes nothing.
 */
import { randomBytes } from "node:crypto";
import { ApiError, REGISTER_PATH, type RegisterResponse, registerRequestSchema, registrationMessage } from "@sharedllm/protocol";
import { NonceCache, SITE_AUTH_HEADERS, SITE_AUTH_WINDOW_MS, verifySiteRequest } from "@sharedllm/protocol/node";
import type { FastifyInstance } from "fastify";
import { verifyMessage } from "viem";
import { hashSecret } from "../credentials.js";
import type { Db } from "../db/database.js";

export interface NodesPluginOptions {
  db: Db;
  /** the site's join token (HMAC key) */
  joinToken: string;
  sessionTtlMs?: number;
  /** registrations one client address may attempt per minute (signed or not) */
  registrationsPerMinute: number;
}

const DEFAULT_SESSION_TTL_MS = 24 * 3600_000;

export async function nodesPlugin(app: FastifyInstance, o: NodesPluginOptions): Promise<void> {
  const nonces = new NonceCache();
  // the HMAC covers the exact bytes of the body, so keep them
  app.addContentTypeParser("application/json", { parseAs: "string" }, (_req, body, done) => done(null, body));

  app.post(REGISTER_PATH, { config: { rateLimit: { max: o.registrationsPerMinute, timeWindow: 60_000 } } }, async (req, reply) => {
    const raw = typeof req.body === "string" ? req.body : "";
    const refused = (why: string) => {
      req.log.warn({ why, ip: req.ip }, "node registration refused");
      return new ApiError("invalid_api_key", `registration refused: ${why}`);
    };
    const auth = verifySiteRequest(o.joinToken, { method: req.method, path: REGISTER_PATH, headers: req.headers, body: raw }, nonces);
    if (!auth.ok) {
      throw refused(
        {
          missing: `sign the request with the site's join token (${Object.values(SITE_AUTH_HEADERS).join(", ")})`,
          expired: "the request's timestamp is more than 60 s off; check this machine's clock",
          bad_signature: "the signature does not match: a wrong join token, or the request was altered",
          replayed: "this request was already used",
        }[auth.reason],
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      throw new ApiError("invalid_json", "the request body is not valid JSON");
    }
    const parsed = registerRequestSchema.safeParse(body);
    if (!parsed.success) throw new ApiError("invalid_request", `bad registration: ${parsed.error.issues[0]?.message}`);
    const nodeId = parsed.data.nodeId.toLowerCase() as `0x${string}`;
    const message = registrationMessage({ nodeId, timestamp: String(auth.timestamp), nonce: auth.nonce });
    const proven = await verifyMessage({ address: nodeId, message, signature: parsed.data.proof as `0x${string}` }).catch(() => false);
    if (!proven) throw refused("the proof is not signed by the node's key");
    // a node excluded after failed audits comes back only when the operator clears it (docs/verification.md)
    const standing = await o.db
      .selectFrom("node_standing")
      .select("excluded_reason")
      .where("node_id", "=", nodeId)
      .where("excluded_at", "is not", null)
      .executeTakeFirst();
    if (standing) {
      req.log.warn({ nodeId, ip: req.ip }, "registration of an excluded node refused");
      throw new ApiError(
        "permission_denied",
        `this node is excluded (${standing.excluded_reason}); the coordinator's operator must clear it`,
      );
    }

    const sessionToken = randomBytes(32).toString("base64url");
    const now = new Date();
    const expiresAt = new Date(now.getTime() + (o.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS));
    await o.db.transaction().execute(async (tx) => {
      // the nonce cache above is this process's; the database's outlives a restart and serves every replica
      await tx.deleteFrom("site_nonces").where("expires_at", "<", now).execute();
      const fresh = await tx
        .insertInto("site_nonces")
        .values({ nonce: auth.nonce, expires_at: new Date(auth.timestamp + SITE_AUTH_WINDOW_MS) })
        .onConflict((c) => c.column("nonce").doNothing())
        .returning("nonce")
        .executeTakeFirst();
      if (!fresh) throw refused("this request was already used");
      await tx
        .insertInto("nodes")
        .values({ id: nodeId, engine: "unknown", first_seen_at: now, last_seen_at: now })
        .onConflict((c) => c.column("id").doUpdateSet({ last_seen_at: now }))
        .execute();
      await tx.deleteFrom("node_sessions").where("node_id", "=", nodeId).where("expires_at", "<", now).execute();
      await tx
        .insertInto("node_sessions")
        .values({ token_hash: hashSecret(sessionToken), node_id: nodeId, expires_at: expiresAt })
        .execute();
      await tx
        .insertInto("events")
        .values({ kind: "node.registered", node_id: nodeId, data: JSON.stringify({ ip: req.ip }) })
        .execute();
    });
    req.log.info({ nodeId }, "node registered");
    const res: RegisterResponse = { nodeId, sessionToken, expiresAt: expiresAt.toISOString() };
    return reply.code(201).send(res);
  });
}

/** The node a control-channel session token belongs to, if it is valid. */
export async function sessionNode(db: Db, token: string): Promise<string | undefined> {
  const row = await db
    .selectFrom("node_sessions")
    .select("node_id")
    .where("token_hash", "=", hashSecret(token))
    .where("expires_at", ">", new Date())
    .executeTakeFirst();
  return row?.node_id;
}
