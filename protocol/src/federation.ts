/**
 * Federation on the wire (docs/federation.md): where signed coordinator-to-coordinator calls
 * live, and `GET /v1/federation`, the public view of this site's identity and its peers.
 */
import type { Address, Hex } from "viem";
import { z } from "zod";
import { hexBytesSchema, uintStringSchema } from "./ledger.js";

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
  /** what it advertised last (its capacity call), null before the first answer or with outbound off */
  capacity: PeerCapacity | null;
  /** jobs forwarded to it (out) and run here for it (in), as this site's log has them */
  forwarded: { out: number; in: number };
  /**
   * what the sites owe each other by the federation receipts (credits, smallest unit, decimal
   * strings): out, what this site accepted owing the peer for jobs it served; in, what this site
   * signed to the peer for jobs run here
   */
  credits: { out: string; in: string };
}

/** One model a site advertises to its peers. */
export interface AdvertisedModel {
  /** the name a request asks for */
  id: string;
  /** its GGUF file */
  sha256: string;
  /** free job slots over the units serving it now */
  freeSlots: number;
  /** credits per 1000 tokens (smallest unit, decimal strings) */
  pricePer1k: { prompt: string; completion: string };
}

/** `GET /federation/v1/capacity`: what a site serves peers now. */
export interface CapacityResponse {
  /** false while the site takes no forwarded jobs */
  inbound: boolean;
  models: AdvertisedModel[];
}

/** The largest capacity answer a site reads from a peer, bytes. */
export const MAX_CAPACITY_BYTES = 256 * 1024;

const pricePer1k = z.string().regex(/^\d{1,30}$/, "a price is a decimal string of at most 30 digits");

/**
 * A peer's capacity answer as the origin checks it: a stranger's bytes until proven otherwise.
 * One entry that does not parse throws the whole answer out (the peer gets no jobs until it
 * answers well). Unknown extra fields are tolerated.
 */
export const capacityResponseSchema = z.looseObject({
  inbound: z.boolean(),
  models: z
    .array(
      z.looseObject({
        id: z.string().min(1).max(200),
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
        freeSlots: z.number().int().min(0).max(10_000),
        pricePer1k: z.looseObject({ prompt: pricePer1k, completion: pricePer1k }),
      }),
    )
    .max(256),
});

/** Whether a host name is this machine's loopback (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Why a peer coordinator's URL may not be used, or undefined when it may: between sites only
 * https, plain http only to a loopback host (one machine: tests and development).
 */
export function peerUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return "it is not a URL";
  }
  if (u.protocol === "https:") return undefined;
  if (u.protocol === "http:" && isLoopbackHost(u.hostname)) return undefined;
  if (u.protocol === "http:") return "plain http is allowed only to a loopback host; use https between sites";
  return "it is not an http(s) URL";
}

/** A peer's capacity as this site last read it, with the round trip it took. */
export interface PeerCapacity extends CapacityResponse {
  latencyMs: number;
  /** ISO time of the read */
  at: string;
}

/**
 * `POST /federation/v1/jobs`: a job forwarded by a peer, run once per transaction id: `txid`
 * (a repeat gets the first result), `kind`, `body` (the OpenAI request as the origin validated
 * it; the serving site validates it again) and `generationLimit` (the most tokens it may
 * generate: the origin holds credits for that many).
 */
const txidSchema = z.string().min(8).max(100);

export const forwardedJobRequestSchema = z.looseObject({
  txid: txidSchema,
  kind: z.enum(["chat", "completion"]),
  body: z.looseObject({ model: z.string().min(1) }),
  generationLimit: z
    .number()
    .int()
    .positive()
    .max(1 << 20),
});
export type ForwardedJobRequest = z.infer<typeof forwardedJobRequestSchema>;

/**
 * `POST /federation/v1/jobs/cancel`: the origin's client went away, charged for `tokens` of the
 * output (what the origin relayed to it). The serving site cancels the job and ends its answer
 * (still being read) with the `end` line of what it charged for the output streamed, at most
 * `tokens` and no prompt, and its receipt for that; 404 when no such job of the peer runs there.
 */
export const forwardedJobCancelSchema = z.object({
  txid: txidSchema,
  /** the output tokens the origin charged its client for */
  tokens: z
    .number()
    .int()
    .min(0)
    .max(1 << 20),
  /** the prompt tokens it charged its client for (what the serving site told in its `p` line) */
  promptTokens: z
    .number()
    .int()
    .min(0)
    .max(1 << 20)
    .default(0),
});
export type ForwardedJobCancel = z.infer<typeof forwardedJobCancelSchema>;

/**
 * The answer to a forwarded job: NDJSON, one line each. `c`: an event the serving unit streamed
 * (`d`, the OpenAI chunk as JSON text) with its tokens (`t`: ids, or their count); at most one `p`
 * (the prompt tokens the serving unit's engine took, told as its output begins: what a client that
 * leaves mid-stream pays for its prompt); then exactly one of `end` (the usage the serving site
 * metered: of a job the origin cancelled, what it charged for the output streamed and the prompt)
 * or `error`.
 */
export type ForwardedLine =
  | { c: 1; d: string; t: number[] | number }
  | { p: number }
  | {
      end: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
      /** the serving site's federation receipt for the job, when it charges for it, and its signature */
      receipt?: FederationReceiptWire;
      signature?: Hex;
    }
  | { error: { message: string; status?: number; retryable: boolean } };

/**
 * What a serving site signs (EIP-712, its coordinator key) to the origin at the end of a forwarded
 * job: the tokens it served and the credits it charged the origin for them, at its advertised
 * price. The origin checks it against what it relayed and, when it holds, adds its credits to what
 * it accepts owing the serving site on the ledger (CreditLedger.accept): the serving site settles
 * the origin's escrow only up to that (docs/federation.md, Clearing).
 */
export interface FederationReceipt {
  origin: Address;
  server: Address;
  /** keccak256 of the transaction id's UTF-8 */
  txid: Hex;
  /** sha256 of the GGUF file that served it */
  model: Hex;
  promptTokens: number;
  completionTokens: number;
  credits: bigint;
  /** unix seconds */
  issuedAt: bigint;
}

export const FEDERATION_RECEIPT_TYPES = {
  FederationReceipt: [
    { name: "origin", type: "address" },
    { name: "server", type: "address" },
    { name: "txid", type: "bytes32" },
    { name: "model", type: "bytes32" },
    { name: "promptTokens", type: "uint32" },
    { name: "completionTokens", type: "uint32" },
    { name: "credits", type: "uint256" },
    { name: "issuedAt", type: "uint64" },
  ],
} as const;

/** The typed data of a federation receipt, in the ledger's domain (another name than work receipts'). */
export function federationReceiptTypedData(r: FederationReceipt, domain: { chainId: number; verifyingContract: Address }) {
  return {
    domain: { name: "SharedLLM Federation", version: "1", ...domain },
    types: FEDERATION_RECEIPT_TYPES,
    primaryType: "FederationReceipt",
    message: r,
  } as const;
}

export const federationReceiptWireSchema = z.object({
  origin: hexBytesSchema(20),
  server: hexBytesSchema(20),
  txid: hexBytesSchema(32),
  model: hexBytesSchema(32),
  promptTokens: z.number().int().min(0).max(0xffffffff),
  completionTokens: z.number().int().min(0).max(0xffffffff),
  credits: uintStringSchema,
  issuedAt: z.string().regex(/^\d{1,20}$/),
});
export type FederationReceiptWire = z.infer<typeof federationReceiptWireSchema>;

export function federationReceiptToWire(r: FederationReceipt): FederationReceiptWire {
  return { ...r, credits: r.credits.toString(), issuedAt: r.issuedAt.toString() };
}

export function federationReceiptFromWire(w: FederationReceiptWire): FederationReceipt {
  return {
    ...w,
    origin: w.origin as Address,
    server: w.server as Address,
    txid: w.txid as Hex,
    model: w.model as Hex,
    credits: BigInt(w.credits),
    issuedAt: BigInt(w.issuedAt),
  };
}

/** The NDJSON media type of a forwarded job's answer. */
export const FORWARDED_STREAM_TYPE = "application/x-ndjson";

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
  /** whether this site forwards jobs to peers, and takes jobs from them */
  forwarding: { outbound: boolean; inbound: boolean; inboundCapPerPeer: number | null };
}
