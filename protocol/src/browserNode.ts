/**
 * Browser nodes (docs/browser-node.md): a visitor's tab that serves jobs. It has no node key of
 * its own on disk: the tab makes a session key, the visitor's wallet signs once an EIP-712
 * delegation to it (for one site, one chain, until an expiry), and the tab registers with that
 * delegation and a proof that it holds the session key. The session key is the node's id and
 * signs its receipts; the coordinator credits what it earns to the wallet. Model files come by
 * sha256 from the coordinator (`GET /v1/blobs/<sha256>`). Everything here runs in the browser.
 */
import { type Address, type Hex, type TypedDataDefinition, toHex } from "viem";
import { z } from "zod";

/** Registration of a browser node (a delegation instead of a node key's own address). */
export const BROWSER_REGISTER_PATH = "/v1/nodes/register-browser";

/**
 * What a browser node's session key proves at registration (EIP-191 personal message): unlike a
 * native node's registrationMessage it names the wallet, the site and the chain, so a proof seen
 * at one site (or a native node's) cannot be replayed at another to pay its work to a stranger.
 */
export function browserRegistrationMessage(p: {
  sessionKey: string;
  wallet: string;
  coordinator: string;
  chainId: number;
  timestamp: string;
  nonce: string;
}): string {
  return [
    "SharedLLM browser node registration",
    `session key: ${p.sessionKey.toLowerCase()}`,
    `wallet: ${p.wallet.toLowerCase()}`,
    `site: ${p.coordinator}`,
    `chain: ${p.chainId}`,
    `timestamp: ${p.timestamp}`,
    `nonce: ${p.nonce}`,
  ].join("\n");
}
/** Model blobs by sha256, for browser nodes: `${BLOBS_PATH}/<sha256>`. */
export const BLOBS_PATH = "/v1/blobs";

/** Who may join as a browser node: nobody, holders of the site's join link, or any wallet. */
export const browserNodesModeSchema = z.enum(["off", "token", "open"]);
export type BrowserNodesMode = z.infer<typeof browserNodesModeSchema>;

/** The longest a delegation may run: a tab's key is not meant to outlive a working day by much. */
export const MAX_DELEGATION_SECONDS = 7 * 24 * 3600;

/** The EIP-712 type the wallet signs. */
export const DELEGATION_TYPES = {
  BrowserNodeDelegation: [
    { name: "sessionKey", type: "address" },
    { name: "coordinator", type: "string" },
    { name: "expiresAt", type: "uint64" },
  ],
} as const;

export interface Delegation {
  /** the wallet that delegates, and is paid */
  wallet: Address;
  /** the tab's session key: the browser node's id */
  sessionKey: Address;
  /** the site's origin (scheme://host:port) the delegation is for */
  coordinator: string;
  chainId: number;
  /** unix seconds */
  expiresAt: number;
}

/** What the wallet signs: a delegation to the session key, for one site on one chain, until expiresAt. */
export function delegationTypedData(d: Omit<Delegation, "wallet">): TypedDataDefinition<typeof DELEGATION_TYPES, "BrowserNodeDelegation"> {
  return {
    domain: { name: "SharedLLM browser node", version: "1", chainId: d.chainId },
    types: DELEGATION_TYPES,
    primaryType: "BrowserNodeDelegation",
    message: { sessionKey: d.sessionKey, coordinator: d.coordinator, expiresAt: BigInt(d.expiresAt) },
  };
}

const addressSchema = z.string().regex(/^0x[0-9a-fA-F]{40}$/, "must be an Ethereum address");
const signatureSchema = z.string().regex(/^0x[0-9a-fA-F]{130}$/, "must be a 65-byte signature");

export const browserRegisterRequestSchema = z.object({
  delegation: z.object({
    wallet: addressSchema,
    sessionKey: addressSchema,
    coordinator: z.string().min(1).max(200),
    chainId: z.number().int().positive(),
    expiresAt: z.number().int().positive(),
  }),
  /** the wallet's EIP-712 signature of delegationTypedData */
  walletSignature: signatureSchema,
  /** the session key's EIP-191 signature of browserRegistrationMessage over this request's wallet, site, chain, timestamp and nonce */
  proof: signatureSchema,
});
export type BrowserRegisterRequest = z.infer<typeof browserRegisterRequestSchema>;

export interface BrowserRegisterResponse {
  nodeId: string;
  /** the wallet credited for this node's receipts */
  wallet: string;
  sessionToken: string;
  expiresAt: string;
  /** the models this coordinator lets browser nodes serve, largest allowed first */
  models: BrowserModel[];
}

/** A model a browser node may serve, and where its file is. */
export interface BrowserModel {
  id: string;
  sha256: string;
  sizeBytes: number;
  /** path of its blob on the coordinator */
  url: string;
}

/**
 * Site-request headers (siteAuth.ts in the `/node` entry) made with WebCrypto, for a tab holding
 * the site's join link: the same HMAC-SHA256 over method, path, timestamp, nonce and body hash.
 * Without a join token, only the timestamp and nonce (what `--browser-nodes open` asks for).
 */
export async function signSiteRequestWeb(
  joinToken: string | undefined,
  method: string,
  path: string,
  body: string,
  now = Date.now(),
  nonce = toHex(globalThis.crypto.getRandomValues(new Uint8Array(16))).slice(2),
): Promise<Record<string, string>> {
  const timestamp = String(now);
  const fresh = { "x-sharedllm-timestamp": timestamp, "x-sharedllm-nonce": nonce };
  if (!joinToken) return fresh;
  const subtle = globalThis.crypto.subtle;
  const enc = new TextEncoder();
  const bodyHash = hex(await subtle.digest("SHA-256", enc.encode(body)));
  const key = await subtle.importKey("raw", enc.encode(joinToken), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const canonical = `${method.toUpperCase()}\n${path}\n${timestamp}\n${nonce}\n${bodyHash}`;
  const signature = hex(await subtle.sign("HMAC", key, enc.encode(canonical)));
  return { ...fresh, "x-sharedllm-signature": signature };
}

function hex(buf: ArrayBuffer): string {
  return toHex(new Uint8Array(buf)).slice(2);
}

/** The sha256 of a blob's bytes, hex: what a tab checks a downloaded model against before loading it. */
export async function sha256Hex(data: ArrayBuffer | Uint8Array): Promise<Hex> {
  return toHex(new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", data as ArrayBuffer)));
}
