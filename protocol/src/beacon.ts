/**
 * LAN discovery (docs/architecture.md, "LAN cluster"): daemons of one site announce themselves with
 * UDP beacons (multicast, broadcast as fallback, unicast probes for `site scan`) and measure round
 * trips to each other with probe/pong pairs. Every datagram is `<json>\n<signature>\n<hmac>`: the
 * HMAC-SHA256 of JSON and signature under the site's beacon key (HKDF of the join token), with a
 * timestamp and a nonce, so datagrams of another site, forged ones and replays are ignored. The
 * site key only proves membership: every member holds it. A `beacon` (the datagram that says who a
 * node is, where, and what it claims) is also signed by the node's own secp256k1 key (ECDSA over
 * sha256("sharedllm-beacon/1\n" + json), with the public key in the JSON, which must hash to the
 * node id), so no member can speak for another node id. Probes and pongs only time round trips and
 * stay unsigned by node keys: signing them would add to the very round trip they measure.
 */
import { createHash, createHmac, createPublicKey, hkdfSync, type KeyObject, randomBytes, timingSafeEqual, verify } from "node:crypto";
import type { Hex } from "viem";
import { publicKeyToAddress } from "viem/accounts";
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
  /** a signed beacon's public key (uncompressed, 0x04...): it must hash to `node` */
  pub: z
    .string()
    .regex(/^0x04[0-9a-f]{128}$/)
    .optional(),
});
export type Beacon = z.infer<typeof beaconSchema>;
/** bad_signature: not sealed with this site's key; spoofed: a beacon not signed by the node it names */
export type BeaconFailure = "malformed" | "other_site" | "expired" | "bad_signature" | "spoofed" | "replayed";

/** A node key that signs beacons (a viem account). */
export interface BeaconSigner {
  address: string;
  publicKey: Hex;
  sign(args: { hash: Hex }): Promise<Hex>;
}

const SIGNING_PREFIX = "sharedllm-beacon/1\n";

/** The site's beacon key, derived from its join token (every member of the site holds it). */
export function siteBeaconKey(joinToken: string): Buffer {
  return Buffer.from(hkdfSync("sha256", joinToken, "sharedllm", "site-beacon-v1", 32));
}

export function siteId(key: Buffer): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

type BeaconBody = Omit<Beacon, "site" | "ts" | "nonce" | "pub"> & Partial<Pick<Beacon, "ts" | "nonce">>;

function seal(key: Buffer, full: Beacon, signature: string): Buffer {
  const json = JSON.stringify(full);
  const mac = createHmac("sha256", key).update(`${json}\n${signature}`).digest("hex");
  return Buffer.from(`${json}\n${signature}\n${mac}`);
}

function complete(key: Buffer, body: BeaconBody): Beacon {
  return { ...body, site: siteId(key), ts: body.ts ?? Date.now(), nonce: body.nonce ?? randomBytes(16).toString("hex") };
}

/** A probe or pong: sealed with the site key only (a `beacon` must be signed: signBeacon). */
export function sealBeacon(key: Buffer, body: BeaconBody & { kind: "probe" | "pong" }): Buffer {
  return seal(key, complete(key, body), "");
}

/** A beacon sealed with the site key and signed by the node's own key, which names the node. */
export async function signBeacon(key: Buffer, signer: BeaconSigner, body: Omit<BeaconBody, "kind" | "node">): Promise<Buffer> {
  const full = complete(key, { ...body, kind: "beacon", node: signer.address.toLowerCase() });
  full.pub = signer.publicKey.toLowerCase();
  const json = JSON.stringify(full);
  const hash = `0x${createHash("sha256")
    .update(SIGNING_PREFIX + json)
    .digest("hex")}` as Hex;
  // r || s: what node:crypto verifies (IEEE P1363); the recovery byte is not needed with the key at hand
  return seal(key, full, (await signer.sign({ hash })).slice(2, 130));
}

/** Public keys already checked against the node id they hash to. */
const nodeKeys = new Map<string, { node: string; key: KeyObject }>();

function nodeKey(pub: string): { node: string; key: KeyObject } {
  let known = nodeKeys.get(pub);
  if (!known) {
    const raw = Buffer.from(pub.slice(2), "hex");
    const jwk = { kty: "EC", crv: "secp256k1", x: raw.subarray(1, 33).toString("base64url"), y: raw.subarray(33).toString("base64url") };
    known = { node: publicKeyToAddress(pub as Hex).toLowerCase(), key: createPublicKey({ key: jwk, format: "jwk" }) };
    if (nodeKeys.size >= 4096) nodeKeys.clear();
    nodeKeys.set(pub, known);
  }
  return known;
}

/** A datagram of this site, fresh and seen once, a beacon signed by the node it names; otherwise why it is ignored. */
export function openBeacon(
  key: Buffer,
  packet: Buffer,
  nonces: NonceCache,
  now = Date.now(),
): { ok: true; beacon: Beacon } | { ok: false; reason: BeaconFailure } {
  if (packet.length > 2_048) return { ok: false, reason: "malformed" };
  const text = packet.toString("utf8");
  const macAt = text.lastIndexOf("\n");
  const sigAt = macAt > 0 ? text.lastIndexOf("\n", macAt - 1) : -1;
  if (sigAt < 0) return { ok: false, reason: "malformed" };
  const json = text.slice(0, sigAt);
  const signature = text.slice(sigAt + 1, macAt);
  let parsed: z.ZodSafeParseResult<Beacon>;
  try {
    parsed = beaconSchema.safeParse(JSON.parse(json));
  } catch {
    return { ok: false, reason: "malformed" };
  }
  if (!parsed.success) return { ok: false, reason: "malformed" };
  const beacon = parsed.data;
  if (beacon.site !== siteId(key)) return { ok: false, reason: "other_site" };
  const mac = Buffer.from(text.slice(macAt + 1), "hex");
  const expected = createHmac("sha256", key).update(text.slice(0, macAt)).digest();
  if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) return { ok: false, reason: "bad_signature" };
  if (Math.abs(now - beacon.ts) > BEACON_WINDOW_MS) return { ok: false, reason: "expired" };
  if (beacon.kind === "beacon") {
    if (!beacon.pub || !/^[0-9a-f]{128}$/.test(signature)) return { ok: false, reason: "spoofed" };
    const signer = nodeKey(beacon.pub);
    const good =
      signer.node === beacon.node &&
      verify("sha256", Buffer.from(SIGNING_PREFIX + json), { key: signer.key, dsaEncoding: "ieee-p1363" }, Buffer.from(signature, "hex"));
    if (!good) return { ok: false, reason: "spoofed" };
  }
  if (!nonces.add(beacon.nonce, beacon.ts + BEACON_WINDOW_MS, now)) return { ok: false, reason: "replayed" };
  return { ok: true, beacon };
}
