/**
 * Reading the indexed history (docs/indexing.md): an address's purchases, escrow movements,
 * settlements that charged it and claims, and the federation's events, newest first, a page at a
 * time. A page's cursor is the position (block, log index) of its last item: the next page is what
 * lies before it, so items indexed meanwhile never shift a page.
 */
import type {
  ClaimItem,
  EscrowItem,
  FederationItem,
  HistoryItemBase,
  HistoryPage,
  PurchaseItem,
  SettlementItem,
  TransactionHistory,
} from "@sharedllm/protocol";
import { type Expression, type SqlBool, sql } from "kysely";
import type { Db } from "../db/database.js";
import type { ChainEventColumns } from "../db/schema.js";
import { HISTORY_TABLES, type HistoryTable } from "./entities.js";

/** A page's place: before this (block, log index); absent for the newest. */
export interface Position {
  block: bigint;
  logIndex: number;
}

/** `<block>.<logIndex>`: digits that fit bigint and integer columns */
export const CURSOR_PATTERN = /^(\d{1,18})\.(\d{1,9})$/;

export function parseCursor(cursor: string | undefined): Position | undefined {
  const m = cursor === undefined ? null : CURSOR_PATTERN.exec(cursor);
  return m ? { block: BigInt(m[1] as string), logIndex: Number(m[2]) } : undefined;
}

const cursorOf = (item: HistoryItemBase) => `${item.blockNumber}.${item.logIndex}`;

type Row = { [K in keyof ChainEventColumns]: unknown } & Record<string, unknown>;

const base = (r: Row): HistoryItemBase => ({
  blockNumber: String(r.block_number),
  timestamp: Number(r.timestamp),
  transactionHash: r.tx_hash as string,
  logIndex: Number(r.log_index),
});

const str = (v: unknown) => String(v);

/** Rows of one table before `at`, newest first, where `where` holds. */
async function rowsOf(db: Db, table: HistoryTable, where: Expression<SqlBool>, at: Position | undefined, limit: number): Promise<Row[]> {
  let q = db
    .selectFrom(table as "deposits")
    .selectAll()
    .where(() => where);
  if (at) q = q.where(sql<SqlBool>`(block_number, log_index) < (${at.block.toString()}::bigint, ${at.logIndex}::integer)`);
  return (await q.orderBy("block_number", "desc").orderBy("log_index", "desc").limit(limit).execute()) as unknown as Row[];
}

/** Newest first across lists each already newest first; the page and the cursor after it. */
function pageOf<T extends HistoryItemBase>(lists: T[][], limit: number): HistoryPage<T> {
  const all = lists.flat().sort((a, b) => {
    const d = BigInt(b.blockNumber) - BigInt(a.blockNumber);
    return d !== 0n ? (d > 0n ? 1 : -1) : b.logIndex - a.logIndex;
  });
  const data = all.slice(0, limit);
  return { data, nextCursor: all.length > limit ? cursorOf(data[data.length - 1] as T) : null };
}

/** `column = value` in SQL (columns are ours, never the caller's). */
const is = (column: string, value: string) => sql<SqlBool>`${sql.ref(column)} = ${value}`;
const either = (a: string, b: string, value: string) => sql<SqlBool>`(${sql.ref(a)} = ${value} or ${sql.ref(b)} = ${value})`;
const always = sql<SqlBool>`true`;

export class History {
  constructor(private readonly db: Db) {}

  private async list<T extends HistoryItemBase>(
    parts: { table: HistoryTable; where: Expression<SqlBool>; item: (r: Row) => T }[],
    at: Position | undefined,
    limit: number,
  ): Promise<HistoryPage<T>> {
    const lists = await Promise.all(parts.map(async (p) => (await rowsOf(this.db, p.table, p.where, at, limit + 1)).map(p.item)));
    return pageOf(lists, limit);
  }

  /** Credits an address bought. */
  purchases(address: string, at: Position | undefined, limit: number): Promise<HistoryPage<PurchaseItem>> {
    return this.list(
      [
        {
          table: "credit_purchases",
          where: is("buyer", address),
          item: (r) => ({ ...base(r), buyer: str(r.buyer), credits: str(r.credits), paid: str(r.paid), token: str(r.token) }),
        },
      ],
      at,
      limit,
    );
  }

  /** An address's deposits into escrow, withdrawal requests and withdrawals, with any coordinator. */
  escrow(address: string, at: Position | undefined, limit: number): Promise<HistoryPage<EscrowItem>> {
    const part = (table: HistoryTable, kind: EscrowItem["kind"]) => ({
      table,
      where: is("user", address),
      item: (r: Row): EscrowItem => ({
        ...base(r),
        kind,
        user: str(r.user),
        coordinator: str(r.coordinator),
        amount: str(r.amount),
        ...(kind === "withdrawal_request" && { unlockAt: str(r.unlock_at) }),
      }),
    });
    return this.list(
      [part("deposits", "deposit"), part("withdrawal_requests", "withdrawal_request"), part("withdrawals", "withdrawal")],
      at,
      limit,
    );
  }

  /** Settlement batches that charged an address, with its cumulative spend as each posted it. */
  async settlements(address: string, at: Position | undefined, limit: number): Promise<HistoryPage<SettlementItem>> {
    const users = await rowsOf(this.db, "settlement_batch_users", is("user", address), at, limit + 1);
    const batches = users.length
      ? ((await this.db
          .selectFrom("settlement_batches")
          .selectAll()
          .where(
            "tx_hash",
            "in",
            users.map((u) => u.tx_hash as string),
          )
          .execute()) as unknown as Row[])
      : [];
    const batchOf = new Map(batches.map((b) => [`${b.tx_hash}:${b.log_index}`, b]));
    const items = users.flatMap((u): SettlementItem[] => {
      const b = batchOf.get(`${u.tx_hash}:${u.log_index}`);
      if (!b) return [];
      return [
        {
          ...base(b),
          coordinator: str(b.coordinator),
          batchId: str(b.batch_id),
          earningsRoot: str(b.earnings_root),
          batchSpent: str(b.batch_spent),
          totalEarnings: str(b.total_earnings),
          users: str(b.users),
          cumulativeSpent: str(u.cumulative_spent),
        },
      ];
    });
    return pageOf([items], limit);
  }

  /** A node's claims of its earnings, at any coordinator. */
  claims(node: string, at: Position | undefined, limit: number): Promise<HistoryPage<ClaimItem>> {
    return this.list(
      [
        {
          table: "claims",
          where: is("node", node),
          item: (r) => ({
            ...base(r),
            coordinator: str(r.coordinator),
            node: str(r.node),
            amount: str(r.amount),
            cumulative: str(r.cumulative),
          }),
        },
      ],
      at,
      limit,
    );
  }

  /** The federation's events: registrations, updates, renewals, admissions, revocations, endorsements and acceptances; of one address when given. */
  federation(address: string | undefined, at: Position | undefined, limit: number): Promise<HistoryPage<FederationItem>> {
    const site = address === undefined ? always : is("coordinator", address);
    const pair = (a: string, b: string) => (address === undefined ? always : either(a, b, address));
    const item =
      (kind: FederationItem["kind"], extra: (r: Row) => Partial<FederationItem> = () => ({})) =>
      (r: Row): FederationItem => ({ ...base(r), kind, coordinator: str(r.coordinator), ...extra(r) });
    return this.list<FederationItem>(
      [
        {
          table: "site_registrations",
          where: site,
          item: item("registered", (r) => ({
            url: str(r.url),
            metadata: str(r.metadata),
            keyId: str(r.key_id),
            validUntil: str(r.valid_until),
          })),
        },
        { table: "site_updates", where: site, item: item("updated", (r) => ({ url: str(r.url), metadata: str(r.metadata) })) },
        {
          table: "key_renewals",
          where: site,
          item: item("key_renewed", (r) => ({ keyId: str(r.key_id), validUntil: str(r.valid_until) })),
        },
        { table: "admissions", where: site, item: item("admitted") },
        { table: "revocations", where: site, item: item("revoked") },
        {
          table: "endorsement_changes",
          where: pair("site", "peer"),
          item: (r) => ({ ...base(r), kind: r.endorsed ? "endorsed" : "unendorsed", coordinator: str(r.peer), by: str(r.site) }),
        },
        {
          table: "acceptances",
          where: pair("origin", "server"),
          item: (r) => ({ ...base(r), kind: "accepted", coordinator: str(r.server), by: str(r.origin), cumulative: str(r.cumulative) }),
        },
      ],
      at,
      limit,
    );
  }

  /** Everything indexed of one transaction, in log order (where the portal links a transaction on a chain with no explorer). */
  async transaction(hash: string): Promise<TransactionHistory | undefined> {
    const found = await Promise.all(
      HISTORY_TABLES.map(async (table) => {
        const rows = (await this.db
          .selectFrom(table as "deposits")
          .selectAll()
          .where("tx_hash", "=", hash)
          .execute()) as unknown as Row[];
        return rows.map((r) => {
          const { tx_hash, log_index, block_number, timestamp, ...fields } = r;
          return {
            entity: table,
            ...base(r),
            fields: Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, typeof v === "boolean" ? v : String(v)])),
          };
        });
      }),
    );
    const events = found.flat().sort((a, b) => a.logIndex - b.logIndex);
    const first = events[0];
    if (!first) return undefined;
    return { transactionHash: hash, blockNumber: first.blockNumber, timestamp: first.timestamp, events };
  }
}
