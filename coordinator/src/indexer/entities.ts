/**
 * What the history indexer keeps of each CreditLedger and FederationRegistry event (pure): the
 * table its row goes to and the row, one per log, keyed by (transaction hash, log index). These
 * are the subgraph's immutable entities (subgraph/schema.graphql) under the events' own argument
 * names in snake case; the subgraph's mutable ones (escrows, sites, endorsements) are sums and
 * latest values over these rows, so undoing a reorganisation is deleting rows. Governance and
 * operator settings share one table, as the subgraph's GovernanceEvent.
 */
import { CreditLedger, FederationRegistry } from "@sharedllm/contracts";
import type { Abi, AbiEvent, Address, Hex } from "viem";
import type { ChainHistoryTables } from "../db/schema.js";

export type HistoryTable = keyof ChainHistoryTables;

/** A log as viem decodes it against the contracts' ABIs, with its block's time. */
export interface DecodedLog {
  eventName: string;
  args: Record<string, unknown>;
  address: Address;
  transactionHash: Hex;
  logIndex: number;
  blockNumber: bigint;
}

const TABLES: Record<string, HistoryTable> = {
  CreditsBought: "credit_purchases",
  Deposited: "deposits",
  WithdrawalRequested: "withdrawal_requests",
  Withdrawn: "withdrawals",
  BatchSettled: "settlement_batches",
  SpendShortfall: "spend_shortfalls",
  Claimed: "claims",
  Accepted: "acceptances",
  Registered: "site_registrations",
  Updated: "site_updates",
  KeyRenewed: "key_renewals",
  Admitted: "admissions",
  Revoked: "revocations",
  Endorsed: "endorsement_changes",
  RoleGranted: "role_changes",
  RoleRevoked: "role_changes",
};

/** Every event of both contracts by name (RoleGranted and the like are the same event in both). */
const EVENTS = new Map<string, AbiEvent>(
  ([...CreditLedger.abi, ...FederationRegistry.abi] as Abi).filter((x): x is AbiEvent => x.type === "event").map((e) => [e.name, e]),
);

/** The events of both contracts, each once: what the indexer asks the chain for. */
export const CONTRACT_EVENTS: readonly AbiEvent[] = [...EVENTS.values()];

/** Every table an event may land in. */
export const HISTORY_TABLES: readonly HistoryTable[] = [
  ...new Set<HistoryTable>([...Object.values(TABLES), "governance_events", "settlement_batch_users"]),
];

const snake = (name: string) => name.replace(/_+$/, "").replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** An argument as a column takes it: addresses and bytes in lower-case hex, integers as bigint. */
function column(type: string, value: unknown): unknown {
  if (type === "address" || type.startsWith("bytes")) return String(value).toLowerCase();
  if (type.startsWith("uint") || type.startsWith("int")) return BigInt(value as bigint | number);
  if (type === "string") return storable(String(value));
  return value;
}

/** An argument as the subgraph's GovernanceEvent writes it: hex or decimal text. */
function text(type: string, value: unknown): string {
  return type === "address" || type.startsWith("bytes") ? String(value).toLowerCase() : storable(String(value));
}

/**
 * A string anyone could put on chain, as a text column takes it: PostgreSQL refuses a NUL in text,
 * and one such string (a registration's URL, say) would stop every later round at its block.
 */
export function storable(s: string): string {
  return s.includes("\u0000") ? s.replaceAll("\u0000", "\uFFFD") : s;
}

/**
 * The table and row of one log; undefined for an event neither contract declares (a log of
 * another contract at the same address cannot happen, but an ABI newer than the code could).
 */
export function rowOf(log: DecodedLog, timestamp: bigint): { table: HistoryTable; row: Record<string, unknown> } | undefined {
  const event = EVENTS.get(log.eventName);
  if (!event) return undefined;
  const base = {
    tx_hash: log.transactionHash.toLowerCase(),
    log_index: log.logIndex,
    block_number: log.blockNumber,
    timestamp,
    contract: log.address.toLowerCase(),
  };
  const table = TABLES[log.eventName];
  if (!table) {
    const args = event.inputs.map((i) => `${i.name}=${text(i.type, log.args[i.name as string])}`).join(",");
    return { table: "governance_events", row: { ...base, name: log.eventName, args } };
  }
  const row: Record<string, unknown> = { ...base };
  for (const i of event.inputs) row[snake(i.name as string)] = column(i.type, log.args[i.name as string]);
  if (table === "role_changes") row.granted = log.eventName === "RoleGranted";
  return { table, row };
}

/** A settle call's users and their cumulative spend, as rows of settlement_batch_users for its BatchSettled log. */
export function batchUserRows(
  log: DecodedLog,
  timestamp: bigint,
  call: { users: readonly Address[]; cumulativeSpent: readonly bigint[] },
): Record<string, unknown>[] {
  return call.users.map((user, position) => ({
    tx_hash: log.transactionHash.toLowerCase(),
    log_index: log.logIndex,
    block_number: log.blockNumber,
    timestamp,
    contract: log.address.toLowerCase(),
    position,
    user: user.toLowerCase(),
    coordinator: String(log.args.coordinator).toLowerCase(),
    cumulative_spent: call.cumulativeSpent[position] ?? 0n,
  }));
}
