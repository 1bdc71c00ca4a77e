/**
 * Site membership: requests from a node to its site's coordinator are signed with
 * HMAC-SHA256 under the site's join token, over method, path, timestamp, nonce and
 * the body's sha256. A request is good for 60 s and once (the receiver keeps a
 * nonce cache). Registration also carries the node's own EIP-191 signature over
 * the same nonce, proving it holds the key of the address it claims (registration.ts).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";

export const SITE_AUTH_HEADERS = {
  timestamp: "x-sharedllm-timestamp",
  nonce: "x-sharedllm-nonce",
  signature: "x-sharedllm-signature",
} as const;

/** How far a request's timestamp may be from the receiver's clock. */
export const SITE_AUTH_WINDOW_MS = 60_000;

function canonical(method: string, path: string, timestamp: string, nonce: string, body: string): string {
  const bodyHash = createHash("sha256").update(body).digest("hex");
  return `${method.toUpperCase()}\n${path}\n${timestamp}\n${nonce}\n${bodyHash}`;
}

/** Headers that authenticate one request under the site's join token. */
export function signSiteRequest(
  joinToken: string,
  method: string,
  path: string,
  body: string,
  now = Date.now(),
  nonce = randomBytes(16).toString("hex"),
): Record<(typeof SITE_AUTH_HEADERS)[keyof typeof SITE_AUTH_HEADERS], string> {
  const timestamp = String(now);
  const signature = createHmac("sha256", joinToken)
    .update(canonical(method, path, timestamp, nonce, body))
    .digest("hex");
  return { [SITE_AUTH_HEADERS.timestamp]: timestamp, [SITE_AUTH_HEADERS.nonce]: nonce, [SITE_AUTH_HEADERS.signature]: signature };
}

export type SiteAuthFailure = "missing" | "expired" | "bad_signature" | "replayed";

/**
 * Checks a request's HMAC and freshness. The nonce is remembered only when
 * everything else holds, so forged requests cannot fill the cache.
 */
export function verifySiteRequest(
  joinToken: string,
  req: { method: string; path: string; headers: Record<string, string | string[] | undefined>; body: string },
  nonces: NonceCache,
  now = Date.now(),
): { ok: true; nonce: string; timestamp: number } | { ok: false; reason: SiteAuthFailure } {
  const h = (name: string) => {
    const v = req.headers[name];
    return typeof v === "string" ? v : undefined;
  };
  const timestamp = h(SITE_AUTH_HEADERS.timestamp);
  const nonce = h(SITE_AUTH_HEADERS.nonce);
  const signature = h(SITE_AUTH_HEADERS.signature);
  if (!timestamp || !nonce || !signature || !/^\d{1,16}$/.test(timestamp) || !/^[0-9a-f]{16,128}$/.test(nonce)) {
    return { ok: false, reason: "missing" };
  }
  const ts = Number(timestamp);
  if (Math.abs(now - ts) > SITE_AUTH_WINDOW_MS) return { ok: false, reason: "expired" };
  const expected = createHmac("sha256", joinToken)
    .update(canonical(req.method, req.path, timestamp, nonce, req.body))
    .digest();
  const got = Buffer.from(signature, "hex");
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) return { ok: false, reason: "bad_signature" };
  if (!nonces.add(nonce, ts + SITE_AUTH_WINDOW_MS, now)) return { ok: false, reason: "replayed" };
  return { ok: true, nonce, timestamp: ts };
}

/** Nonces seen within the window; entries expire once their request could no longer be fresh. */
export class NonceCache {
  private readonly seen = new Map<string, number>();

  /** false when the nonce was already used */
  add(nonce: string, expiresAt: number, now = Date.now()): boolean {
    if (this.seen.size > 1_000) for (const [n, exp] of this.seen) if (exp < now) this.seen.delete(n);
    const prior = this.seen.get(nonce);
    if (prior !== undefined && prior >= now) return false;
    this.seen.set(nonce, expiresAt);
    return true;
  }
}
