/**
 * Whom a site trusts (pure): a registered peer that governance admitted, or that this site
 * endorsed while it is pending; never one that governance revoked, nor one whose key's
 * valid-until has passed (by this coordinator's clock: expiry happens without a transaction).
 */
import type { DistrustReason, TrustPath } from "@sharedllm/protocol";
import type { Address, Hex } from "viem";

/** A coordinator's record in FederationRegistry, with whether this site endorsed it. */
export interface RegistryEntry {
  address: Address;
  publicKey: Hex;
  url: string;
  metadata: string;
  status: "pending" | "admitted" | "revoked";
  keyId: number;
  /** unix seconds */
  validUntil: number;
  /** unix seconds */
  registeredAt: number;
  /** whether this site endorsed it */
  endorsed: boolean;
}

export type Trust = { trusted: true; path: TrustPath } | { trusted: false; reason: DistrustReason };

/** How long trust read from the registry is believed when new reads fail: then every peer is cut off. */
export function staleAfterMs(refreshMs: number): number {
  return Math.max(4 * refreshMs, 60_000);
}

export function trustOf(e: RegistryEntry, nowS: number): Trust {
  if (e.status === "revoked") return { trusted: false, reason: "revoked" };
  if (e.validUntil <= nowS) return { trusted: false, reason: "expired" };
  if (e.status === "admitted") return { trusted: true, path: "admitted" };
  return e.endorsed ? { trusted: true, path: "endorsed" } : { trusted: false, reason: "not_admitted" };
}

export const DISTRUST_WORDS: Record<DistrustReason, string> = {
  revoked: "governance revoked it",
  expired: "its key expired",
  not_admitted: "governance has not admitted it and this site has not endorsed it",
  registry_unreadable: "this site has not been able to read the federation registry lately",
};
