/** Bearer credentials (API keys, node session tokens): how they arrive and how they are stored. */
import { createHash } from "node:crypto";

/** The hash a secret is stored as (sha256, hex); the secret itself is never stored. */
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
