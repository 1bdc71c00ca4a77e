/** Bearer credentials (API keys, node session tokens): how they arrive and how they are stored. */
import { createHash, createHmac } from "node:crypto";

/** The hash a secret is stored as (sha256, hex); the secret itself is never stored. */
/**
 * The token of a site's Contribute link (`/contribute#token=…`) in `--browser-nodes token` mode,
 * derived from its join token: a visitor given the link can join as a browser node, but the link
 * does not carry the join token itself, which would let them register native nodes, heads and
 * tunnels.
 */
export function browserLinkToken(joinToken: string): string {
  return createHmac("sha256", joinToken).update("sharedllm browser nodes").digest("base64url");
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** The token of an `Authorization: Bearer <token>` header, if that is what the header holds. */
export function bearerToken(header: string | undefined): string | undefined {
  return /^Bearer\s+(\S+)$/i.exec(header ?? "")?.[1];
}

/**
 * The token a browser offers as a WebSocket subprotocol (`bearer.<token>`, after
 * CONTROL_SUBPROTOCOL): a page's WebSocket cannot send an Authorization header.
 */
export function protocolBearer(header: string | undefined): string | undefined {
  for (const p of (header ?? "").split(",")) {
    const m = /^bearer\.([\w-]+)$/.exec(p.trim());
    if (m) return m[1];
  }
  return undefined;
}
