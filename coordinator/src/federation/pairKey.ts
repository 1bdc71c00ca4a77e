/**
 * The key two coordinators share without ever sending it: HKDF-SHA256 over the x coordinate of
 * ECDH(own secp256k1 key, the peer's registered public key), bound to both addresses and both
 * key ids in a fixed order (lower address first), so both ends derive the same 32 bytes and a
 * renewal of either key (a new key id) gives a new pair key.
 */
import { createECDH, hkdfSync } from "node:crypto";
import type { Address, Hex } from "viem";

export interface PairEnd {
  address: Address;
  keyId: number;
}

const SALT = "sharedllm-federation-v1";

/** The HKDF info: both ends as `address:keyId`, lower address first. */
export function pairInfo(a: PairEnd, b: PairEnd): string {
  const ends = [a, b].map((e) => ({ address: e.address.toLowerCase(), keyId: e.keyId }));
  if (ends[0]?.address === ends[1]?.address) throw new Error("a pair key needs two different coordinators");
  ends.sort((x, y) => (x.address < y.address ? -1 : 1));
  return `sharedllm federation pair key\n${ends.map((e) => `${e.address}:${e.keyId}`).join("\n")}`;
}

/**
 * The per-pair HMAC key. `privateKey` is this coordinator's (32 bytes, hex); `peerPublicKey` the
 * peer's as registered: the uncompressed point without its 0x04 prefix (64 bytes, hex).
 */
export function pairKey(privateKey: Hex, own: PairEnd, peerPublicKey: Hex, peer: PairEnd): Buffer {
  const point = Buffer.from(peerPublicKey.slice(2), "hex");
  if (point.length !== 64) throw new Error(`a registered public key has 64 bytes, not ${point.length}`);
  const ecdh = createECDH("secp256k1");
  ecdh.setPrivateKey(Buffer.from(privateKey.slice(2), "hex"));
  // throws on a point that is not on the curve
  const shared = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), point]));
  return Buffer.from(hkdfSync("sha256", shared, SALT, pairInfo(own, peer), 32));
}
