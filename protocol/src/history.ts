/**
 * The chain's history as the coordinator's `GET /v1/history/...` routes give it (docs/indexing.md):
 * what the embedded indexer read from CreditLedger and FederationRegistry events, newest first,
 * a page at a time. Every item names its transaction and log; amounts are credits (the ledger's
 * smallest unit) as decimal strings, block numbers too.
 */
import { z } from "zod";

const hexString = z.string().regex(/^0x[0-9a-f]*$/);
/** an address in lower case */
const lowerAddress = z.string().regex(/^0x[0-9a-f]{40}$/);
/** a non-negative integer as a decimal string (bigint on the chain) */
const decimal = z.string().regex(/^\d+$/);

/** Where an item happened on the chain. */
export const historyItemBaseSchema = z.object({
  blockNumber: decimal,
  /** the block's time, unix seconds */
  timestamp: z.number().int(),
  transactionHash: hexString,
  logIndex: z.number().int(),
});

export const purchaseItemSchema = historyItemBaseSchema.extend({
  buyer: lowerAddress,
  credits: decimal,
  /** what was paid, in wei or the stablecoin's units */
  paid: decimal,
  /** the stablecoin, or the zero address for the chain's native coin */
  token: lowerAddress,
});

export const escrowItemSchema = historyItemBaseSchema.extend({
  kind: z.enum(["deposit", "withdrawal_request", "withdrawal"]),
  user: lowerAddress,
  coordinator: lowerAddress,
  amount: decimal,
  /** a withdrawal request: when it can be taken, unix seconds */
  unlockAt: decimal.optional(),
});

export const settlementItemSchema = historyItemBaseSchema.extend({
  coordinator: lowerAddress,
  batchId: decimal,
  earningsRoot: hexString,
  batchSpent: decimal,
  totalEarnings: decimal,
  /** how many users the batch charged */
  users: decimal,
  /** the address's cumulative spend as this batch posted it (after a shortfall the ledger kept less: its SpendShortfall event) */
  cumulativeSpent: decimal,
});

export const claimItemSchema = historyItemBaseSchema.extend({
  coordinator: lowerAddress,
  node: lowerAddress,
  amount: decimal,
  cumulative: decimal,
});

export const FEDERATION_HISTORY_KINDS = [
  "registered",
  "updated",
  "key_renewed",
  "admitted",
  "revoked",
  "endorsed",
  "unendorsed",
  "accepted",
] as const;

export const federationItemSchema = historyItemBaseSchema.extend({
  kind: z.enum(FEDERATION_HISTORY_KINDS),
  /** the site concerned: the one registered, updated, admitted, revoked or endorsed; the server an origin accepted owing */
  coordinator: lowerAddress,
  /** who acted, when not governance or the site itself: the endorser, or the origin that accepted */
  by: lowerAddress.optional(),
  url: z.string().optional(),
  metadata: z.string().optional(),
  keyId: decimal.optional(),
  validUntil: decimal.optional(),
  /** accepted: what the origin owes the server in all */
  cumulative: decimal.optional(),
});

/** A page of history: `nextCursor` fetches the older items after these (null: no more). */
export const historyPageSchema = <T extends z.ZodType>(item: T) => z.object({ data: z.array(item), nextCursor: z.string().nullable() });

export const historyStatusSchema = z.object({
  /** whether this coordinator indexes the chain now */
  indexing: z.boolean(),
  /** the last block indexed (null before the first) */
  block: decimal.nullable(),
  blockHash: hexString.nullable(),
  /** the last round's failure, while it lasts */
  lastError: z.string().nullable(),
  /** where a transaction is shown: the explorer's base URL (`{explorer}/tx/{hash}`), null where the chain has none */
  explorerUrl: z.string().nullable(),
});

/** Everything indexed of one transaction: each event's entity (the indexer's table) and its fields. */
export const transactionHistorySchema = z.object({
  transactionHash: hexString,
  blockNumber: decimal,
  timestamp: z.number().int(),
  events: z.array(
    historyItemBaseSchema.extend({
      entity: z.string().describe("the indexer's table, e.g. deposits, claims, site_registrations"),
      fields: z
        .record(z.string(), z.union([z.string(), z.boolean()]))
        .describe("the event's arguments as columns (numbers as decimal strings)"),
    }),
  ),
});

export type TransactionHistory = z.infer<typeof transactionHistorySchema>;
export type HistoryItemBase = z.infer<typeof historyItemBaseSchema>;
export type PurchaseItem = z.infer<typeof purchaseItemSchema>;
export type EscrowItem = z.infer<typeof escrowItemSchema>;
export type SettlementItem = z.infer<typeof settlementItemSchema>;
export type ClaimItem = z.infer<typeof claimItemSchema>;
export type FederationItem = z.infer<typeof federationItemSchema>;
export type HistoryStatus = z.infer<typeof historyStatusSchema>;
export interface HistoryPage<T> {
  data: T[];
  nextCursor: string | null;
}
