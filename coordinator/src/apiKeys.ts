/**
 * API keys: `sk-` + 32 random bytes, shown once; only the sha256 is stored.
 * Lookups are cached briefly in memory to keep the database off the request path.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { KEY_POLICIES, type KeyPolicy } from "@sharedllm/protocol";
import { hashSecret } from "./credentials.js";
import type { Db } from "./db/database.js";

export interface ApiKeyInfo {
  id: string;
  name: string;
  /** the wallet whose credits the key spends; undefined for the operator's unmetered keys */
  owner?: string;
  /** where its jobs may run */
  policy: KeyPolicy;
}

/** A new key; with an owner it spends that wallet's credits, without one it is the operator's (free). */
export async function createApiKey(
  db: Db,
  name: string,
  owner?: string,
  policy: KeyPolicy = "any",
): Promise<ApiKeyInfo & { secret: string }> {
  const secret = `sk-${randomBytes(32).toString("base64url")}`;
  const id = `key_${randomUUID()}`;
  await db
    .insertInto("api_keys")
    .values({ id, name, key_hash: hashSecret(secret), owner_address: owner?.toLowerCase() ?? null, policy })
    .execute();
  return { id, name, owner: owner?.toLowerCase(), policy, secret };
}

/** A stored policy word as a KeyPolicy (an unknown one is read as the strictest). */
function policyOf(word: string): KeyPolicy {
  return (KEY_POLICIES as readonly string[]).includes(word) ? (word as KeyPolicy) : "own_nodes";
}

const CACHE_MS = 5_000;

export class ApiKeyVerifier {
  private readonly cache = new Map<string, { info: ApiKeyInfo | undefined; until: number }>();

  constructor(private readonly db: Db) {}

  /** The key's record, or undefined for an unknown or revoked key. */
  async verify(secret: string): Promise<ApiKeyInfo | undefined> {
    const hash = hashSecret(secret);
    const now = Date.now();
    const hit = this.cache.get(hash);
    if (hit && hit.until > now) return hit.info;
    const row = await this.db
      .selectFrom("api_keys")
      .select(["id", "name", "owner_address", "policy"])
      .where("key_hash", "=", hash)
      .where("revoked_at", "is", null)
      .executeTakeFirst();
    const info = row && { id: row.id, name: row.name, owner: row.owner_address ?? undefined, policy: policyOf(row.policy) };
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(hash, { info, until: now + CACHE_MS });
    return info;
  }

  /** Drops cached lookups (after a key was revoked). */
  forget(): void {
    this.cache.clear();
  }
}
