/**
 * The bodies of the coordinator's read APIs that the portal and the CLI show: the network view,
 * the chain a coordinator settles on and its prices, a wallet's account and API keys, a node's
 * earnings. Credits are bigints on the coordinator and decimal strings here (JSON has no bigint).
 */
import type { Address, Hex } from "viem";
import type { AvailabilityReason, Capabilities, ConfirmedMember } from "./control.js";

/** One node in `GET /v1/network`: online (with its last heartbeat) or offline (with when it was last seen). */
export interface NetworkNode {
  id: string;
  status: "online" | "offline";
  /** false while paused, outside its schedule, draining or yielding to its owner (and a head without a split) */
  accepting: boolean;
  /** why its owner lets it take no jobs now; null when it takes them (or is offline) */
  reason: Exclude<AvailabilityReason, "resumed"> | null;
  engine: string;
  models: string[];
  slots: number;
  activeJobs: number;
  load: number | null;
  freeMemoryBytes: number | null;
  tokensPerSecond: number | null;
  capabilities: Capabilities | null;
  /** solo, worker (lends its rpc-server) or head (serves a split model) */
  role: "solo" | "worker" | "head";
  /** a head's layer split over its workers, once each member's own report confirmed it (with the weight bytes it counted) */
  cluster: ConfirmedMember[] | null;
  /** a virtual node's capacity: its members' memory summed (a solo node's own) */
  capacity: { memoryBytes: number; vramBytes: number } | null;
  lastSeenAt: string;
}

/** Why a node takes no jobs, in words (the CLI and the portal say it the same way). */
export const UNAVAILABLE_REASONS: Record<NonNullable<NetworkNode["reason"]>, string> = {
  paused: "paused by its owner",
  schedule: "outside its contribution schedule",
  draining: "leaving the site",
  owner_busy: "its owner's programs need the machine (owner-first)",
  on_battery: "its machine runs on battery (owner-first)",
};

/** `GET /v1/network` */
export interface NetworkResponse {
  nodes: NetworkNode[];
  /** each model served now, with how many online nodes serve it */
  models: { id: string; nodes: number }[];
  totals: { online: number; offline: number; activeJobs: number };
}

/** Credits per token, decimal strings. */
export interface TokenPrice {
  prompt: string;
  completion: string;
}

/** `GET /v1/ledger` (404 when the coordinator runs without credits) */
export interface LedgerResponse {
  chainId: number;
  /** the CreditLedger contract */
  ledger: Address;
  /** the coordinator's own address (it signs settlements) */
  coordinator: Address;
  /** the JSON-RPC URL the coordinator tells wallets and nodes to use */
  rpcUrl: string;
  pricing: { default: TokenPrice; models: Record<string, TokenPrice> };
}

/** `GET /v1/account`: what a signed-in wallet can spend */
export interface AccountResponse {
  address: Address;
  deposited: string;
  pendingWithdrawal: string;
  settledSpent: string;
  /** charged here and not yet settled on chain */
  charged: string;
  /** held for requests in flight */
  held: string;
  available: string;
}

/** One key in `GET /v1/keys` (never its secret) */
export interface ApiKeyListing {
  id: string;
  name: string;
  createdAt: string;
  revokedAt: string | null;
  usage: { requests: number; promptTokens: number; completionTokens: number; credits: string };
}

/** `GET /v1/keys` */
export interface ApiKeysResponse {
  data: ApiKeyListing[];
}

/** `POST /v1/keys`: the secret is shown this once */
/**
 * Where a key's jobs may run: `any` (this site's nodes, or a trusted peer site when none here can
 * take it), `site_only` (never forwarded to a peer site), `own_nodes` (only on nodes whose payout
 * address is the key owner's wallet; never forwarded).
 */
export type KeyPolicy = "any" | "site_only" | "own_nodes";

export const KEY_POLICIES: readonly KeyPolicy[] = ["any", "site_only", "own_nodes"];

export interface NewApiKeyResponse {
  id: string;
  name: string;
  key: string;
  owner: Address;
  policy: KeyPolicy;
}

/** `GET /v1/earnings/:address`: what a node earned here, what is settled, and the proof to claim it */
export interface EarningsResponse {
  address: Address;
  coordinator: Address;
  ledger: Address;
  chainId: number;
  earned: string;
  pending: string;
  settled: string;
  claimed: string;
  claimable: string;
  /** earnings set aside by the settler (never paid), with the reason in the coordinator's log */
  setAside: string;
  /** the latest confirmed settlement that pays this node, and its Merkle proof */
  claim: { batchId: number; cumulative: string; proof: Hex[]; root: Hex } | null;
  byDay: { day: string; credits: string }[];
  served: { jobs: number; promptTokens: number; completionTokens: number };
  /** this node's audit record (docs/verification.md); forfeited earnings are in `setAside` */
  audits: AuditStanding;
}

/** A node's audit record. */
export interface AuditStanding {
  passed: number;
  failed: number;
  /** failed audits not cleared by the operator: they raise its audit rate and lower its share of work */
  suspicion: number;
  /** set when it is excluded (no sessions, no registration) until the operator clears it */
  excluded: { at: string; reason: string } | null;
}

/** One audit, as the operator sees it. */
export interface AuditRecord {
  id: string;
  jobId: string;
  node: string;
  model: string;
  status: "queued" | "running" | "passed" | "failed" | "void";
  reason: string | null;
  canary: boolean;
  createdAt: string;
  finishedAt: string | null;
  /** the evidence of a finished audit: what the node's receipt committed to, the claimed tokens, the auditor's scores */
  evidence?: {
    promptHash: string;
    outputHash: string;
    promptTokens: number | null;
    auditedPromptTokens: number | null;
    positions: number[];
    claimed: number[];
    scores: unknown[];
    auditor: string | null;
  };
}

/** `GET /v1/audits` (operator key): the audit rate, each node's record, recent audits with the evidence of failures */
export interface AuditsResponse {
  rates: { established: number; newNodes: number; suspects: number };
  windowMs: number;
  auditors: { id: string; connected: boolean }[];
  totals: { queued: number; running: number; passed: number; failed: number; void: number };
  nodes: ({ node: string } & AuditStanding)[];
  recent: AuditRecord[];
}
