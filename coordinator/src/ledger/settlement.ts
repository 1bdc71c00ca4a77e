/**
 * Batch settlement (DESIGN.md section 7). A batch covers every journal entry up to an id: each
 * user's cumulative spend and each node's cumulative earnings (as a Merkle root). It is prepared
 * and stored before anything is sent; the chain's own record (the last batch number of this
 * coordinator, BatchSettled events) decides whether a stored batch still has to be sent, so a
 * crash between sending and recording neither loses nor doubles a batch: batch numbers are
 * sequential on chain, and a batch the chain already has is only marked confirmed.
 */
import { type EarningsTree, earningsTree } from "@sharedllm/protocol";
import { type Kysely, sql } from "kysely";
import type { Logger } from "pino";
import type { Address, Hex } from "viem";
import type { Database } from "../db/schema.js";
import type { BatchCall, LedgerChain } from "./chain.js";

export interface SettlementOptions {
  /** settle once this many unsettled charges and earnings have accumulated; default 1000 */
  batchSize?: number;
  /** settle once the oldest unsettled entry is this old; default 5 min */
  maxAgeMs?: number;
  /** how often to look; default 1 s */
  checkEveryMs?: number;
  /** a sent settlement not mined after this long is replaced with higher fees; default 60 s */
  stuckAfterMs?: number;
  /** most users whose spend one settlement posts (each costs a storage write); default 400 */
  maxUsersPerBatch?: number;
}

interface Payload {
  users: Address[];
  spends: string[];
  /** every node's cumulative earnings up to this batch */
  earnings: Record<Address, string>;
  root: Hex;
  totalEarnings: string;
}

export interface SettledEarnings {
  batchId: number;
  root: Hex;
  cumulative: bigint;
  proof: Hex[];
}

/** Test hook: SHAREDLLM_FAILPOINT=settlement.sent kills the process right after a settlement is sent. */
function failpoint(name: string) {
  if (process.env.SHAREDLLM_FAILPOINT === name) process.kill(process.pid, "SIGKILL");
}

export class Settler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private failures = 0;
  private retryAt = 0;
  private readonly trees = new Map<number, EarningsTree>();

  constructor(
    private readonly db: Kysely<Database>,
    private readonly chain: LedgerChain,
    private readonly log: Logger,
    private readonly o: SettlementOptions = {},
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.o.checkEveryMs ?? 1_000);
    this.timer.unref();
    void this.tick();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One pass: finish stored batches, then prepare and post a new one when due (or when forced). */
  tick(force = false): Promise<void> {
    // a forced pass waits for one in progress, then runs itself
    if (this.running) return force ? this.running.then(() => this.tick(true)) : this.running;
    if (!force && Date.now() < this.retryAt) return Promise.resolve();
    this.running = this.pass(force)
      .then(
        () => {
          this.failures = 0;
          this.retryAt = 0;
        },
        (err: Error) => {
          this.failures += 1;
          const delay = Math.min(60_000, 1_000 * 2 ** this.failures);
          this.retryAt = Date.now() + delay;
          this.log.error({ err: err.message, retryInMs: delay }, "settlement failed; will retry");
        },
      )
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }

  private async pass(force: boolean) {
    const open = await this.db.selectFrom("settlements").selectAll().where("status", "!=", "confirmed").orderBy("batch_id").execute();
    for (const batch of open) await this.post(batch.batch_id, JSON.parse(batch.payload) as Payload);
    if (!(force || (await this.due()))) return;
    const prepared = await this.prepare();
    if (prepared) await this.post(prepared.batchId, prepared.payload);
  }

  private async lastBatch() {
    return this.db.selectFrom("settlements").select(["batch_id", "max_entry_id"]).orderBy("batch_id", "desc").limit(1).executeTakeFirst();
  }

  private async due(): Promise<boolean> {
    const last = await this.lastBatch();
    const pending = await this.db
      .selectFrom("ledger_entries")
      .select([sql<string>`count(*)`.as("n"), sql<Date | null>`min(created_at)`.as("oldest")])
      .where("kind", "in", ["charge", "earn"])
      .where("id", ">", last?.max_entry_id ?? "0")
      .executeTakeFirstOrThrow();
    const n = Number(pending.n);
    if (n === 0) return false;
    const age = pending.oldest ? Date.now() - new Date(pending.oldest).getTime() : 0;
    return n >= (this.o.batchSize ?? 1000) || age >= (this.o.maxAgeMs ?? 5 * 60_000);
  }

  /** Stores the next batch (cumulative sums up to the newest entry); undefined when nothing is new. */
  private async prepare(): Promise<{ batchId: number; payload: Payload } | undefined> {
    return this.db.transaction().execute(async (tx) => {
      await sql`select pg_advisory_xact_lock(hashtext('sharedllm.settlement'))`.execute(tx);
      const last = await tx
        .selectFrom("settlements")
        .select(["batch_id", "max_entry_id"])
        .orderBy("batch_id", "desc")
        .limit(1)
        .executeTakeFirst();
      const after = last?.max_entry_id ?? "0";
      const newest = await tx
        .selectFrom("ledger_entries")
        .select(sql<string | null>`max(id)`.as("max"))
        .where("kind", "in", ["charge", "earn"])
        .executeTakeFirstOrThrow();
      if (newest.max === null || BigInt(newest.max) <= BigInt(after)) return undefined;
      // users who spent since the last batch, in the order of their first new charge; a batch posts
      // at most maxUsersPerBatch of them (one storage write each: a transaction has a gas cap), and
      // ends just before the first charge of the next user, who goes into the next batch
      const cap = this.o.maxUsersPerBatch ?? 400;
      const movers = await tx
        .selectFrom("ledger_entries")
        .select(["address", sql<string>`min(id)`.as("first")])
        .where("kind", "=", "charge")
        .where("id", ">", after)
        .groupBy("address")
        .orderBy(sql`min(id)`)
        .limit(cap + 1)
        .execute();
      const max = movers.length > cap ? (BigInt((movers[cap] as { first: string }).first) - 1n).toString() : newest.max;
      const users = movers.slice(0, cap).map((m) => m.address as Address);
      const sums = await tx
        .selectFrom("ledger_entries")
        .select(["address", "kind", sql<string>`sum(amount)`.as("total")])
        .where((eb) => {
          const earn = eb("kind", "=", "earn");
          return users.length ? eb.or([earn, eb.and([eb("kind", "=", "charge"), eb("address", "in", users)])]) : earn;
        })
        .where("id", "<=", max)
        .groupBy(["address", "kind"])
        .execute();
      const spent = new Map(sums.filter((r) => r.kind === "charge").map((r) => [r.address, r.total]));
      const spends = users.map((u) => spent.get(u) ?? "0");
      const earnings: Record<Address, string> = {};
      let totalEarnings = 0n;
      for (const row of sums) {
        if (row.kind !== "earn") continue;
        earnings[row.address as Address] = row.total;
        totalEarnings += BigInt(row.total);
      }
      const root = earningsTree(new Map(Object.entries(earnings).map(([a, v]) => [a as Address, BigInt(v)]))).root;
      const payload: Payload = { users, spends, earnings, root, totalEarnings: totalEarnings.toString() };
      const batchId = (last?.batch_id ?? 0) + 1;
      await tx
        .insertInto("settlements")
        .values({ batch_id: batchId, status: "prepared", max_entry_id: max, payload: JSON.stringify(payload) })
        .execute();
      this.log.info(
        { batchId, users: users.length, nodes: Object.keys(earnings).length, totalEarnings: payload.totalEarnings },
        "settlement batch prepared",
      );
      return { batchId, payload };
    });
  }

  /** Gets a stored batch onto the chain exactly once, replacing the transaction while it is stuck. */
  private async post(batchId: number, payload: Payload): Promise<void> {
    const onChain = await this.chain.lastBatch();
    if (onChain >= batchId) {
      const hash = await this.chain.findSettlement(batchId);
      await this.confirm(batchId, hash ?? null);
      this.log.info({ batchId, txHash: hash }, "settlement batch was already on chain; recorded it");
      return;
    }
    if (onChain !== batchId - 1) throw new Error(`the chain has batch ${onChain} of this coordinator; batch ${batchId} cannot follow it`);
    const call: BatchCall = {
      batchId,
      users: payload.users,
      cumulativeSpent: payload.spends.map(BigInt),
      earningsRoot: payload.root,
      totalEarnings: BigInt(payload.totalEarnings),
    };
    const request = await this.chain.simulateSettle(call);
    const pub = this.chain.public;
    const from = this.chain.coordinator;
    const nonce = await pub.getTransactionCount({ address: from, blockTag: "pending" });
    const gas = ((await pub.estimateContractGas(request)) * 12n) / 10n;
    let fees = await pub.estimateFeesPerGas();
    for (let attempt = 0; ; attempt++) {
      const hash = await this.chain.sendSettle(call, {
        nonce,
        gas,
        maxFeePerGas: fees.maxFeePerGas,
        maxPriorityFeePerGas: fees.maxPriorityFeePerGas,
      });
      failpoint("settlement.sent");
      await this.db.updateTable("settlements").set({ status: "sent", tx_hash: hash }).where("batch_id", "=", batchId).execute();
      this.log.info({ batchId, txHash: hash, attempt }, "settlement sent");
      const receipt = await pub.waitForTransactionReceipt({ hash, timeout: this.o.stuckAfterMs ?? 60_000 }).catch(() => undefined);
      if (receipt) {
        if (receipt.status !== "success") throw new Error(`settlement of batch ${batchId} reverted (${hash})`);
        await this.confirm(batchId, hash);
        this.log.info({ batchId, txHash: hash, gasUsed: receipt.gasUsed.toString() }, "settlement confirmed");
        return;
      }
      // an earlier attempt may have been mined meanwhile
      if ((await this.chain.lastBatch()) >= batchId) return this.post(batchId, payload);
      if (attempt >= 5) throw new Error(`settlement of batch ${batchId} is still not mined after ${attempt + 1} attempts`);
      // same nonce, fees up by a quarter: the node replaces the stuck transaction
      fees = { maxFeePerGas: (fees.maxFeePerGas * 5n) / 4n + 1n, maxPriorityFeePerGas: (fees.maxPriorityFeePerGas * 5n) / 4n + 1n };
      this.log.warn({ batchId, txHash: hash }, "settlement not mined in time; replacing it with higher fees");
    }
  }

  private async confirm(batchId: number, hash: Hex | null) {
    await this.db
      .updateTable("settlements")
      .set({ status: "confirmed", tx_hash: hash, confirmed_at: new Date() })
      .where("batch_id", "=", batchId)
      .execute();
  }

  /** A node's earnings in the newest confirmed batch, with the proof its claim needs. */
  async settledEarnings(node: Address): Promise<SettledEarnings | undefined> {
    const batch = await this.db
      .selectFrom("settlements")
      .select(["batch_id", "payload"])
      .where("status", "=", "confirmed")
      .orderBy("batch_id", "desc")
      .limit(1)
      .executeTakeFirst();
    if (!batch) return undefined;
    const payload = JSON.parse(batch.payload) as Payload;
    let tree = this.trees.get(batch.batch_id);
    if (!tree) {
      tree = earningsTree(new Map(Object.entries(payload.earnings).map(([a, v]) => [a as Address, BigInt(v)])));
      this.trees.clear();
      this.trees.set(batch.batch_id, tree);
    }
    const cumulative = payload.earnings[node.toLowerCase() as Address];
    const proof = tree.proof(node);
    if (!cumulative || !proof) return undefined;
    return { batchId: batch.batch_id, root: tree.root, cumulative: BigInt(cumulative), proof };
  }
}
