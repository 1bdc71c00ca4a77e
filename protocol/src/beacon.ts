/**
 * LAN discovery (DESIGN.md section 8): daemons of one site announce themselves with UDP beacons
 * (multicast, broadcast as fallback, unicast probes for `site scan`) and measure round trips to
 * each other with probe/pong pairs. Every datagram is `<json>\n<hmac>`: HMAC-SHA256 of the JSON
 * under the site's beacon key (HKDF of the join token), with a timestamp and a nonce, so beacons
 * of another site, forged ones and replays are ignored.
 */
import { createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from "node:crypto";
import { z } from "zod";
import type { NonceCache } from "./siteAuth.js";

export const DISCOVERY_PORT = 47474;
export const DISCOVERY_GROUP = "239.255.74.74";
/** How far a beacon's timestamp may be from the receiver's clock. */
export const BEACON_WINDOW_MS = 30_000;

const beaconSchema = z.object({
  kind: z.enum(["beacon", "probe", "pong"]),
  /** public id of the site (a hash of its key): other sites' beacons are skipped without a MAC check */
  site: z.string().regex(/^[0-9a-f]{16}$/),
  node: z.string().regex(/^0x[0-9a-f]{40}$/),
  ts: z.number().int().positive(),
  nonce: z.string().regex(/^[0-9a-f]{32}$/),
  /** a pong's probe nonce */
  echo: z
    .string()
    .regex(/^[0-9a-f]{32}$/)
    .optional(),
  memoryBytes: z.number().nonnegative().optional(),
  role: z.enum(["solo", "worker", "head"]).optional(),
  tunnelPort: z.number().int().min(1).max(65_535).optional(),
});
export type Beacon = z.infer<typeof beaconSchema>;
export type BeaconFailure = "malformed" | "other_site" | "expired" | "bad_signature" | "replayed";

/** The site's beacon key, derived from its join token (every member of the site holds it). */
export function siteBeaconKey(joinToken: string): Buffer {
  return Buffer.from(hkdfSync("sha256", joinToken, "sharedllm", "site-beacon-v1", 32));
}

export function siteId(key: Buffer): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

export function sealBeacon(key: Buffer, body: Omit<Beacon, "site" | "ts" | "nonce"> & Partial<Pick<Beacon, "ts" | "nonce">>): Buffer {
  const full: Beacon = { ...body, site: siteId(key), ts: body.ts ?? Date.now(), nonce: body.nonce ?? randomBytes(16).toString("hex") };
  const json = JSON.stringify(full);
  return Buffer.from(`${json}\n${createHmac("sha256", key).update(json).digest("hex")}`);
}

/** A beacon of this site, fresh and seen once; otherwise why it is ignored. */
export function openBeacon(
  key: Buffer,
  packet: Buffer,
  nonces: NonceCache,
  now = Date.now(),
): { ok: true; beacon: Beacon } | { ok: false; reason: BeaconFailure } {
  if (packet.length > 2_048) return { ok: false, reason: "malformed" };
  const text = packet.toString("utf8");
  const nl = text.lastIndexOf("\n");
  if (nl < 0) return { ok: false, reason: "malformed" };
  const json = text.slice(0, nl);
  let parsed: z.ZodSafeParseResult<Beacon>;
  try {
    parsed = beaconSchema.safeParse(JSON.parse(json));
  } catch {
    return { ok: false, reason: "malformed" };
  }
  if (!parsed.success) return { ok: false, reason: "malformed" };
  const beacon = parsed.data;
  if (beacon.site !== siteId(key)) return { ok: false, reason: "other_site" };
  const mac = Buffer.from(text.slice(nl + 1), "hex");
  const expected = createHmac("sha256", key).update(json).digest();
  if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return { ok: false, reason: "bad_signature" };
  if (Math.abs(now - beacon.ts) > BEACON_WINDOW_MS) return { ok: false, reason: "expired" };
  if (!nonces.add(beacon.nonce, beacon.ts + BEACON_WINDOW_MS, now)) return { ok: false, reason: "replayed" };
  return { ok: true, beacon };
}
