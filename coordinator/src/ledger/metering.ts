/**
 * Credits for API use. A user's spendable balance is their escrow for this coordinator on chain
 * (deposited, less an announced withdrawal) minus what the journal says they spent or hold now.
 * Each job reserves its worst case before it runs (HTTP 402 when that does not fit), then is
 * charged its actual usage (never above the hold) and the hold is released, in one transaction.
 *
 * The journal (ledger_entries) is the record; `credit_accounts` keeps each payer's running totals
 * of its charges and open holds, changed in the same statement or transaction as the journal
 * rows, so that a hold is one conditional update (correct under concurrent requests, on one
 * coordinator or several on one PostgreSQL) and costs the same whatever the payer's history.
 */
import { ApiError } from "@sharedllm/protocol";
import { type Kysely, sql } from "kysely";
import type { Address } from "viem";
import type { Database } from "../db/schema.js";
import type { Escrow, LedgerChain } from "./chain.js";

/** Credits per token, in the ledger's smallest unit. */
export interface Price {
  prompt: bigint;
  completion: bigint;
}

export interface Pricing {
  default: Price;
  models?: Record<string, Price>;
}

export const DEFAULT_PRICING: Pricing = { default: { prompt: 1n, completion: 2n } };

/** What a job costs, given its token counts. */
export function jobCost(price: Price, promptTokens: number, completionTokens: number): bigint {
  return price.prompt * BigInt(promptTokens) + price.completion * BigInt(completionTokens);
}

/**
 * An upper bound on a request's prompt tokens without a tokenizer: a token is at least one byte
 * of text, plus a margin for the chat template's own tokens.
 */
export function promptTokenBound(request: Record<string, unknown>): number {
  const text = JSON.stringify(request.messages ?? request.prompt ?? "");
  const messages = Array.isArray(request.messages) ? request.messages.length : 1;
  return Buffer.byteLength(text) + 16 * messages + 64;
}

export interface Balance {
  deposited: bigint;
  pendingWithdrawal: bigint;
  /** settled on chain */
  settledSpent: bigint;
  /** every charge in the journal, settled or not */
  charged: bigint;
  held: bigint;
  available: bigint;
}

const ESCROW_CACHE_MS = 2_000;
/** the first retry of a failed release, and the longest wait between retries */
const RELEASE_RETRY_MS = 1_000;
const MAX_RELEASE_RETRY_MS = 30_000;

export class Metering {
  private readonly escrows = new Map<string, { escrow: Escrow; until: number }>();
  /** holds whose release failed, by job: tried again, less often each time they fail, until they go through */
  private readonly unreleased = new Map<string, { who: string; held: bigint }>();
  private retrying: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly chain: LedgerChain,
    readonly pricing: Pricing,
    /** this coordinator process's lease: its holds are released by no one else while it runs */
    private readonly instance: string,
  ) {}

  price(model: string): Price {
    return this.pricing.models?.[model] ?? this.pricing.default;
  }

  private async escrow(address: Address, fresh: boolean): Promise<Escrow> {
    const key = address.toLowerCase();
    const hit = this.escrows.get(key);
    if (!fresh && hit && hit.until > Date.now()) return hit.escrow;
    const escrow = await this.chain.escrow(address).catch((err: Error) => {
      throw new ApiError("no_capacity", `the credit ledger cannot be read right now (${err.message}); try again shortly`);
    });
    this.escrows.set(key, { escrow, until: Date.now() + ESCROW_CACHE_MS });
    return escrow;
  }

  private async used(address: string): Promise<{ charged: bigint; held: bigint }> {
    const row = await this.db
      .selectFrom("credit_accounts")
      .select(["charged", "held"])
      .where("address", "=", address.toLowerCase())
      .executeTakeFirst();
    return { charged: BigInt(row?.charged ?? 0), held: BigInt(row?.held ?? 0) };
  }

  async balance(address: Address, fresh = true): Promise<Balance> {
    const escrow = await this.escrow(address, fresh);
    const { charged, held } = await this.used(address);
    return {
      deposited: escrow.deposited,
      pendingWithdrawal: escrow.pendingWithdrawal,
      settledSpent: escrow.spent,
      charged,
      held,
      available: spendable(escrow, charged, held),
    };
  }

  /**
   * Holds `amount` for a job, or throws 402 when the balance is short: one statement, which adds
   * to the payer's held total only where what is left covers it (the row is locked meanwhile, and
   * the condition read on its latest version), and journals the hold beside it. Concurrent
   * requests of one wallet, also through several coordinator replicas, cannot overspend.
   */
  async reserve(address: Address, jobId: string, amount: bigint): Promise<void> {
    const who = address.toLowerCase();
    for (const fresh of [false, true]) {
      const escrow = await this.escrow(address, fresh);
      const limit = escrow.deposited - escrow.pendingWithdrawal;
      const { rows } = await sql<{ id: string }>`
        with account as (
          insert into credit_accounts (address, charged, held)
          select ${who}, 0, ${amount}::numeric where ${limit}::numeric >= ${amount}::numeric
          on conflict (address) do update set held = credit_accounts.held + excluded.held
          where ${limit}::numeric - credit_accounts.charged - credit_accounts.held >= excluded.held
          returning address
        )
        insert into ledger_entries (address, kind, amount, job_id, instance_id)
        select address, 'hold', ${amount}::numeric, ${jobId}, ${this.instance} from account
        returning id`.execute(this.db);
      if (rows.length) return;
    }
    const b = await this.balance(address);
    throw new ApiError(
      "insufficient_credits",
      `this request may cost up to ${amount} credits and ${b.available} are available to ${who}; deposit more credits into escrow for this coordinator (or lower max_tokens)`,
    );
  }

  /**
   * Ends a job's hold: charges `cost` (at most the hold) and releases the hold, atomically, with
   * whatever `within` records of the charge in the same transaction. Returns the charge and
   * what `within` returned.
   */
  async charge<T>(
    address: Address,
    jobId: string,
    held: bigint,
    cost: bigint,
    within: (tx: Kysely<Database>, charged: bigint) => Promise<T>,
  ): Promise<{ charged: bigint; recorded: T }> {
    const who = address.toLowerCase();
    const amount = cost < held ? cost : held;
    const recorded = await this.db.transaction().execute(async (tx) => {
      await releaseHold(tx, who, jobId, held);
      if (amount > 0n) {
        await tx.insertInto("ledger_entries").values({ address: who, kind: "charge", amount, job_id: jobId }).execute();
        await sql`
          insert into credit_accounts (address, charged, held) values (${who}, ${amount}::numeric, 0)
          on conflict (address) do update set charged = credit_accounts.charged + excluded.charged`.execute(tx);
      }
      return within(tx, amount);
    });
    return { charged: amount, recorded };
  }

  /**
   * Ends a job's hold without a charge. When that fails (the database away for a moment), the
   * caller hears of it, and the release is tried again in the background until it goes through:
   * else the payer's credits would stay held for as long as this process runs.
   */
  async release(address: Address, jobId: string, held: bigint): Promise<void> {
    const who = address.toLowerCase();
    try {
      await releaseHold(this.db, who, jobId, held);
    } catch (err) {
      this.unreleased.set(jobId, { who, held });
      this.retryReleases(RELEASE_RETRY_MS);
      throw err;
    }
  }

  private retryReleases(afterMs: number): void {
    if (this.retrying || this.stopped) return;
    this.retrying = setTimeout(async () => {
      await this.releaseFailed();
      this.retrying = undefined;
      if (this.unreleased.size) this.retryReleases(Math.min(afterMs * 2, MAX_RELEASE_RETRY_MS));
    }, afterMs);
    this.retrying.unref();
  }

  /** Tries each failed release once more. */
  private async releaseFailed(): Promise<void> {
    for (const [jobId, { who, held }] of this.unreleased) {
      try {
        await releaseHold(this.db, who, jobId, held);
        this.unreleased.delete(jobId);
      } catch {
        // tried again later
      }
    }
  }

  /**
   * As the process stops: failed releases are tried a last time. Returns whether none is left;
   * if some are, the process must leave its lease to lapse (not end it), so that a replica that
   * finds it lapsed, or the next start, releases them.
   */
  async stop(): Promise<boolean> {
    this.stopped = true;
    clearTimeout(this.retrying);
    await this.releaseFailed();
    return this.unreleased.size === 0;
  }

  /**
   * Releases holds of jobs that can no longer finish: those made by coordinator processes whose
   * leases have lapsed (they stopped or died while the jobs ran). At start, every hold but those
   * of the `live` processes (whose leases are current: their holds are theirs to end); later, the
   * holds of the processes found `gone` since.
   */
  static async releaseOrphanedHolds(
    db: Kysely<Database>,
    holders: { live: readonly string[] } | { gone: readonly string[] },
  ): Promise<number> {
    if ("gone" in holders && !holders.gone.length) return 0;
    const orphans = await db
      .selectFrom("ledger_entries as h")
      .select(["h.address", "h.amount", "h.job_id"])
      .where("h.kind", "=", "hold")
      // `live` always holds the caller's own lease
      .where((eb) =>
        "gone" in holders
          ? eb("h.instance_id", "in", holders.gone)
          : eb.or([eb("h.instance_id", "is", null), eb("h.instance_id", "not in", holders.live)]),
      )
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom("ledger_entries as r").select("r.id").whereRef("r.job_id", "=", "h.job_id").where("r.kind", "=", "release"))),
      )
      .execute();
    for (const o of orphans) await releaseHold(db, o.address, o.job_id as string, BigInt(o.amount));
    return orphans.length;
  }
}

/**
 * Journals a job's release and takes it off the payer's held total, in one statement. A hold is
 * released once: a second release (a job that ends after a sweep released it) changes nothing.
 */
async function releaseHold(db: Kysely<Database>, address: string, jobId: string, amount: bigint): Promise<void> {
  await sql`
    with released as (
      insert into ledger_entries (address, kind, amount, job_id) values (${address}, 'release', ${amount}::numeric, ${jobId})
      on conflict (job_id) where kind = 'release' do nothing
      returning address, amount
    )
    update credit_accounts set held = credit_accounts.held - released.amount
    from released where credit_accounts.address = released.address`.execute(db);
}

function spendable(escrow: Escrow, charged: bigint, held: bigint): bigint {
  const left = escrow.deposited - escrow.pendingWithdrawal - charged - held;
  return left > 0n ? left : 0n;
}
