/**
 * Federation on the wire (docs/federation.md): where signed coordinator-to-coordinator calls
 * live, and `GET /v1/federation`, the public view of this site's identity and its peers.
 */
import type { Address, Hex } from "viem";

/** Every coordinator-to-coordinator route lives under this prefix and is signed. */
export const FEDERATION_PREFIX = "/federation/v1";

/** A coordinator's record in FederationRegistry, as a status word. */
export type RegistryStatus = "unregistered" | "pending" | "admitted" | "revoked";

/** How a site came to trust a peer: governance admitted it, or this site endorsed it. */
export type TrustPath = "admitted" | "endorsed";

/** Why a registered peer is not trusted; `registry_unreadable`: this site could not read the registry for too long. */
export type DistrustReason = "revoked" | "expired" | "not_admitted" | "registry_unreadable";

export interface FederationSelf {
  address: Address;
  status: RegistryStatus;
  url: string | null;
  keyId: number | null;
  /** ISO time after which its key is not trusted */
  validUntil: string | null;
  metadata: string | null;
}

export interface FederationPeer {
  address: Address;
  url: string;
  status: Exclude<RegistryStatus, "unregistered">;
  trusted: boolean;
  /** null when not trusted */
  trustPath: TrustPath | null;
  /** null when trusted */
  distrust: DistrustReason | null;
  keyId: number;
  validUntil: string;
  metadata: string;
  /** the uncompressed secp256k1 public key without its 0x04 prefix (public, from the chain) */
  publicKey: Hex;
}

/** `GET /v1/federation` */
export interface FederationResponse {
  self: FederationSelf;
  registry: Address;
  chainId: number;
  /** how often the registry is read (ms): a revoked peer is cut off within it */
  refreshMs: number;
  /** when the registry was last read successfully (ISO), null before the first read */
  refreshedAt: string | null;
  peers: FederationPeer[];
}
