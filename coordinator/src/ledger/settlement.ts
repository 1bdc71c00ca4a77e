/**
 * Batch settlement (docs/security/ledger.md). A batch takes the journal's charges and earnings that no
 * batch took yet (batch_entries records which) and posts each user's cumulative spend and each
 * node's cumulative earnings (as a Merkle root). What a batch takes is decided by batchPlan.ts
 * against the chain's state read just before: entries that would make it revert or pay more than
 * was spent are set aside for good with their reason (set_aside_entries, and the log), so one bad
 * entry never stalls the others; a stored batch the ledger still refuses is dropped and planned
 * again. A batch is stored before anything is sent; the chain's own record (the last batch number
 * of this coordinator, and what its BatchSettled transaction posted) decides whether a stored batch
 * still has to be sent, so a crash between sending and recording neither loses nor doubles a
 * batch, and a database that is not this coordinator's history is refused.
 *
 * Coordinator replicas on one PostgreSQL settle one at a time: a pass runs only while its replica
 * holds a PostgreSQL advisory lock, on a connection of its own, which the server lets go of when
 * that replica dies; the next pass of any replica then carries on from the stored batches.
 */
import { type EarningsTree, earningsTree, receiptJobId } from "@sharedllm/protocol";
import { type Kysely, sql } from "kysely";
import type { Logger } from "pino";
import { type Address, BaseError, ContractFunctionRevertedError, type Hex } from "viem";
import type { Database } from "../db/schema.js";
import { type JobHistory, type JournalEntry, planBatch } from "./batchPlan.js";
import type { BatchCall, Escrow, LedgerChain } from "./chain.js";

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
  /**
   * With audits (docs/verification.md): a node's earnings settle only once this window is over
   * and none of its audits is still open that could forfeit them; absent: earnings settle with the
   * next batch. The trusted auditors' own (never audited) do not wait.
   */
  audits?: { windowMs: number; trusted: readonly string[] };
  /**
   * How long a peer coordinator's charges beyond what it accepted owing this one wait for its
   * acceptance before they are posted as its shortfall (nothing earned on them); default 10 min
   */
  peerGraceMs?: number;
  /** other coordinator processes may settle from the same database (PostgreSQL): passes take its lock */
  shared?: boolean;
}

/** The advisory lock a settlement pass holds while coordinators share a database. */
const SETTLER_LOCK = sql`hashtext('sharedllm.settler')`;

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

/** A settlement not mined after this many sends (each with higher fees) is given up until the next pass. */
const MAX_SENDS = 6;
/** Most journal entries one batch looks at. */
const MAX_ENTRIES = 20_000;
/** Contract errors that say a batch's content cannot be settled: it is dropped and prepared again from the chain's state. */
const CONTENT_ERRORS = new Set(["EarningsAboveSpend", "EarningsDecreased", "SpendDecreased", "BatchSpendAboveCap", "LengthMismatch"]);

/** The contract error a failed call reverted with, if it reverted. */
function revertReason(err: unknown): string | undefined {
  if (!(err instanceof BaseError)) return undefined;
  const reverted = err.walk((e) => e instanceof ContractFunctionRevertedError);
  return reverted instanceof ContractFunctionRevertedError ? (reverted.data?.errorName ?? reverted.reason ?? "reverted") : undefined;
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

  /** How long a charge may wait before its settlement is mined, at worst (ms). */
  private worstLagMs(): number {
    return (this.o.maxAgeMs ?? 5 * 60_000) + (this.o.checkEveryMs ?? 1_000) + MAX_SENDS * (this.o.stuckAfterMs ?? 60_000);
  }

  /**
   * Refuses settings under which a user could withdraw before their spend is settled: the worst
   * lag of a settlement must fit half the ledger's withdrawal notice (the other half is headroom
   * for an RPC outage or a gas top-up).
   */
  async checkWithdrawalNotice(): Promise<void> {
    const noticeMs = Number(await this.chain.withdrawalNotice()) * 1000;
    const lag = this.worstLagMs();
    if (lag <= noticeMs / 2) return;
    const fixed = lag - (this.o.maxAgeMs ?? 5 * 60_000);
    const most = Math.floor((noticeMs / 2 - fixed) / 1000);
    throw new Error(
      `settlements may lag spend by up to ${Math.ceil(lag / 1000)} s (settle after ${Math.ceil((this.o.maxAgeMs ?? 300_000) / 1000)} s, plus up to ${MAX_SENDS} sends of a stuck transaction), but the ledger lets a user withdraw ${noticeMs / 1000} s after announcing it, and settlement must fit half of that: users could withdraw before paying. ${
        most > 0 ? `Settle at most every ${most} s (--settle-after ${most})` : "Settle more often"
      }, or have governance raise the withdrawal notice.`,
    );
  }

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

  /**
   * What this coordinator accepts owing each peer site, from the peers' receipts that held
   * (docs/federation.md, Clearing); set when federation is on. Posted on chain when it grows,
   * before each pass: a peer settles this coordinator's escrow only up to it.
   */
  acceptances?: () => Promise<Map<Address, bigint>>;
  private readonly acceptedOnChain = new Map<string, bigint>();

  private async postAcceptances(): Promise<void> {
    if (!this.acceptances) return;
    const grown: [Address, bigint][] = [];
    for (const [server, total] of await this.acceptances()) {
      if (total <= (this.acceptedOnChain.get(server) ?? -1n)) continue;
      const onChain = await this.chain.accepted(server);
      this.acceptedOnChain.set(server, onChain);
      if (total > onChain) grown.push([server, total]);
    }
    if (!grown.length) return;
    const hash = await this.chain.accept(
      grown.map(([server]) => server),
      grown.map(([, total]) => total),
    );
    for (const [server, total] of grown) this.acceptedOnChain.set(server, total);
    this.log.info({ peers: grown.length, txHash: hash }, "posted what this site accepts owing peer sites");
  }

  /**
   * A pass, under the settler lock when the database is shared: a forced pass waits for it, a
   * timed one leaves the work to the replica that holds it.
   */
  private async pass(force: boolean) {
    if (!this.o.shared) return this.settle(force);
    await this.db.connection().execute(async (conn) => {
      if (force) await sql`select pg_advisory_lock(${SETTLER_LOCK})`.execute(conn);
      else {
        const { rows } = await sql<{ got: boolean }>`select pg_try_advisory_lock(${SETTLER_LOCK}) as got`.execute(conn);
        if (!rows[0]?.got) return;
      }
      try {
        await this.settle(force);
      } finally {
        await sql`select pg_advisory_unlock(${SETTLER_LOCK})`.execute(conn);
      }
    });
  }

  private async settle(force: boolean) {
    // what this site owes peers waits for the next pass if it cannot be posted; its own batches do not
    await this.postAcceptances().catch((err: Error) =>
      this.log.error({ err: err.message }, "posting what this site accepts owing peer sites failed; next pass tries again"),
    );
    const open = await this.db.selectFrom("settlements").selectAll().where("status", "!=", "confirmed").orderBy("batch_id").execute();
    for (const batch of open) await this.post(batch.batch_id, JSON.parse(batch.payload) as Payload);
    if (!(force || (await this.due()))) return;
    const prepared = await this.prepare();
    if (prepared) await this.post(prepared.batchId, prepared.payload);
  }

  /**
   * Charges and earnings no batch took and none set aside. With audits, an earning only once its
   * window is over and no audit of its node is open that could still forfeit it: a failed audit
   * forfeits the node's earnings from one window before its job on (audits.ts, penalise).
   */
  private untaken(db: Kysely<Database>) {
    const windowMs = this.o.audits?.windowMs ?? 0;
    const trusted = [...(this.o.audits?.trusted ?? []), ""].map((a) => a.toLowerCase());
    return db
      .selectFrom("ledger_entries as e")
      .where("e.kind", "in", ["charge", "earn"])
      .$if(windowMs > 0, (q) =>
        q.where(({ or, and, eb, not, exists, selectFrom }) =>
          or([
            eb("e.kind", "=", "charge"),
            eb("e.address", "in", trusted),
            and([
              eb("e.created_at", "<=", new Date(Date.now() - windowMs)),
              not(
                exists(
                  selectFrom("audits as a")
                    .select("a.id")
                    // a browser node's earnings are its wallet's (docs/browser-node.md)
                    .where(
                      sql<boolean>`(a.node_id = e.address or a.node_id in (select d.session_key from browser_delegations d where d.wallet = e.address))`,
                    )
                    .where("a.status", "in", ["queued", "running"])
                    .where(sql<boolean>`a.created_at <= e.created_at + ${windowMs / 1000} * interval '1 second'`),
                ),
              ),
            ]),
          ]),
        ),
      )
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom("batch_entries as b").select("b.entry_id").whereRef("b.entry_id", "=", "e.id"))),
      )
      .where(({ not, exists, selectFrom }) =>
        not(exists(selectFrom("set_aside_entries as a").select("a.entry_id").whereRef("a.entry_id", "=", "e.id"))),
      );
  }

  private async due(): Promise<boolean> {
    const pending = await this.untaken(this.db)
      .select([sql<string>`count(*)`.as("n"), sql<Date | null>`min(e.created_at)`.as("oldest")])
      .executeTakeFirstOrThrow();
    const n = Number(pending.n);
    if (n === 0) return false;
    const age = pending.oldest ? Date.now() - new Date(pending.oldest).getTime() : 0;
    return n >= (this.o.batchSize ?? 1000) || age >= (this.o.maxAgeMs ?? 5 * 60_000);
  }

  /**
   * Stores the next batch: the untaken entries that pass batchPlan's checks against the chain's
   * state now, taken in the same transaction that numbers the batch (no id watermark: an entry
   * committed late goes into the next batch); entries that fail are set aside. Undefined when
   * nothing is left to take.
   */
  private async prepare(): Promise<{ batchId: number; payload: Payload } | undefined> {
    const [onChain, maxBatchSpend, now] = await Promise.all([this.chain.settlement(), this.chain.maxBatchSpend(), this.chain.now()]);
    const settleBy = now + BigInt(Math.ceil((MAX_SENDS * (this.o.stuckAfterMs ?? 60_000)) / 1000));
    return this.db.transaction().execute(async (tx) => {
      await sql`select pg_advisory_xact_lock(hashtext('sharedllm.settlement'))`.execute(tx);
      const recentSince = new Date(Date.now() - (this.o.peerGraceMs ?? 10 * 60_000));
      const rows = await this.untaken(tx)
        .select(["e.id", "e.address", "e.kind", "e.amount", "e.job_id", sql<boolean>`e.created_at > ${recentSince}`.as("recent")])
        // a charge for a job run for a peer site: whether its federation receipt was signed
        .select(({ exists, selectFrom }) =>
          exists(
            selectFrom("federated_jobs as f")
              .select("f.txid")
              .where("f.direction", "=", "in")
              .whereRef("f.job_id", "=", "e.job_id")
              .where("f.receipt", "is not", null),
          ).as("receipted"),
        )
        .orderBy("e.id")
        .limit(MAX_ENTRIES)
        .execute();
      if (!rows.length) return undefined;
      const entries: JournalEntry[] = rows.map((r) => ({
        id: String(r.id),
        address: r.address as Address,
        kind: r.kind as JournalEntry["kind"],
        amount: BigInt(r.amount),
        // receipts name a job by its hash: charges are keyed the same way, so a job's earnings meet its charge
        jobId: r.job_id === null ? null : r.kind === "charge" ? receiptJobId(r.job_id) : r.job_id.toLowerCase(),
        recent: Boolean(r.recent),
        receipted: Boolean(r.receipted),
      }));
      const jobKey = new Map(entries.map((e) => [e.id, e.jobId]));
      const payers = [...new Set(entries.filter((e) => e.kind === "charge").map((e) => e.address))];
      const jobIds = [...new Set(entries.flatMap((e) => (e.kind === "earn" && e.jobId ? [e.jobId] : [])))];
      const [posted, escrows, history, earnings] = await Promise.all([
        this.postedSpend(tx, payers),
        this.escrows(payers),
        this.jobHistory(tx, jobIds),
        this.earnedBefore(tx),
      ]);
      const plan = planBatch({
        entries,
        users: new Map(payers.map((u, i) => [u, { posted: posted.get(u) ?? 0n, escrow: escrows[i] as Escrow }])),
        jobs: history,
        earnings,
        chain: { totalSpent: onChain.totalSpent, maxBatchSpend, settleBy },
        maxUsers: this.o.maxUsersPerBatch ?? 400,
      });
      if (plan.setAside.length) {
        await tx
          .insertInto("set_aside_entries")
          .values(plan.setAside.map((a) => ({ entry_id: a.id, job_key: jobKey.get(a.id) ?? null, reason: a.reason })))
          .onConflict((c) => c.column("entry_id").doNothing())
          .execute();
        for (const a of plan.setAside) this.log.warn({ entryId: a.id, reason: a.reason }, "journal entry set aside");
      }
      if (!plan.take.length) return undefined;
      const last = await tx.selectFrom("settlements").select("batch_id").orderBy("batch_id", "desc").limit(1).executeTakeFirst();
      const batchId = (last?.batch_id ?? 0) + 1;
      const earningsRecord: Record<Address, string> = {};
      for (const [node, v] of plan.earnings) earningsRecord[node] = v.toString();
      const root = earningsTree(plan.earnings).root;
      const payload: Payload = {
        users: plan.users,
        spends: plan.spends.map(String),
        earnings: earningsRecord,
        root,
        totalEarnings: plan.totalEarnings.toString(),
      };
      const maxEntry = plan.take.reduce((a, b) => (BigInt(b) > BigInt(a) ? b : a));
      await tx
        .insertInto("settlements")
        .values({ batch_id: batchId, status: "prepared", max_entry_id: maxEntry, payload: JSON.stringify(payload) })
        .execute();
      for (let i = 0; i < plan.take.length; i += 1000) {
        await tx
          .insertInto("batch_entries")
          .values(plan.take.slice(i, i + 1000).map((id) => ({ entry_id: id, batch_id: batchId, job_key: jobKey.get(id) ?? null })))
          .execute();
      }
      this.log.info(
        {
          batchId,
          entries: plan.take.length,
          setAside: plan.setAside.length,
          users: plan.users.length,
          nodes: plan.earnings.size,
          batchSpent: plan.batchSpent.toString(),
          totalEarnings: payload.totalEarnings,
        },
        "settlement batch prepared",
      );
      return { batchId, payload };
    });
  }

  /** Each user's charges taken by earlier batches. */
  private async postedSpend(db: Kysely<Database>, users: Address[]): Promise<Map<Address, bigint>> {
    if (!users.length) return new Map();
    const rows = await db
      .selectFrom("ledger_entries as e")
      .innerJoin("batch_entries as b", "b.entry_id", "e.id")
      .select(["e.address", sql<string>`sum(e.amount)`.as("total")])
      .where("e.kind", "=", "charge")
      .where("e.address", "in", users)
      .groupBy("e.address")
      .execute();
    return new Map(rows.map((r) => [r.address as Address, BigInt(r.total)]));
  }

  /** Escrows as the chain has them now, a few reads at a time. */
  private async escrows(users: Address[]): Promise<Escrow[]> {
    const out: Escrow[] = [];
    for (let i = 0; i < users.length; i += 16) out.push(...(await Promise.all(users.slice(i, i + 16).map((u) => this.chain.escrow(u)))));
    return out;
  }

  /** What earlier batches and set-aside entries say about each job (by the key receipts use). */
  private async jobHistory(db: Kysely<Database>, jobKeys: string[]): Promise<Map<string, JobHistory>> {
    const jobs = new Map<string, JobHistory>();
    if (!jobKeys.length) return jobs;
    const job = (key: string | null) => {
      const h = jobs.get(key as string) ?? { charged: 0n, earned: 0n, chargeSetAside: false };
      jobs.set(key as string, h);
      return h;
    };
    const taken = await db
      .selectFrom("batch_entries as b")
      .innerJoin("ledger_entries as e", "e.id", "b.entry_id")
      .select(["b.job_key", "e.kind", "e.amount"])
      .where("b.job_key", "in", jobKeys)
      .execute();
    for (const r of taken) {
      if (r.kind === "charge") job(r.job_key).charged += BigInt(r.amount);
      else job(r.job_key).earned += BigInt(r.amount);
    }
    const aside = await db
      .selectFrom("set_aside_entries as a")
      .innerJoin("ledger_entries as e", "e.id", "a.entry_id")
      .select("a.job_key")
      .where("a.job_key", "in", jobKeys)
      .where("e.kind", "=", "charge")
      .execute();
    for (const r of aside) job(r.job_key).chargeSetAside = true;
    return jobs;
  }

  /** Each node's earnings taken by earlier batches. */
  private async earnedBefore(db: Kysely<Database>): Promise<Map<Address, bigint>> {
    const rows = await db
      .selectFrom("ledger_entries as e")
      .innerJoin("batch_entries as b", "b.entry_id", "e.id")
      .select(["e.address", sql<string>`sum(e.amount)`.as("total")])
      .where("e.kind", "=", "earn")
      .groupBy("e.address")
      .execute();
    return new Map(rows.map((r) => [r.address as Address, BigInt(r.total)]));
  }

  /** Drops a batch the chain never took, so its entries are planned again against the chain's state. */
  private async discard(batchId: number, why: string): Promise<never> {
    await this.db.transaction().execute(async (tx) => {
      const taken = tx.selectFrom("batch_entries").select("entry_id").where("batch_id", "=", batchId);
      await tx.deleteFrom("set_aside_entries").where("entry_id", "in", taken).execute();
      await tx.deleteFrom("batch_entries").where("batch_id", "=", batchId).execute();
      await tx.deleteFrom("settlements").where("batch_id", "=", batchId).where("status", "!=", "confirmed").execute();
    });
    this.log.warn({ batchId, why }, "settlement batch dropped; it will be prepared again from the chain's state");
    throw new Error(`settlement batch ${batchId} was refused by the ledger (${why}); it will be prepared again`);
  }

  /** Gets a stored batch onto the chain exactly once, replacing the transaction while it is stuck. */
  private async post(batchId: number, payload: Payload): Promise<void> {
    const onChain = await this.chain.lastBatch();
    if (onChain >= batchId) {
      // the chain has a batch with this number: it is ours only if it posted what we stored
      const settled = await this.chain.findSettlement(batchId);
      const same =
        settled?.root.toLowerCase() === payload.root.toLowerCase() &&
        (!settled.call ||
          (settled.call.totalEarnings === BigInt(payload.totalEarnings) &&
            settled.call.users.map((u) => u.toLowerCase()).join() === payload.users.map((u) => u.toLowerCase()).join() &&
            settled.call.cumulativeSpent.join() === payload.spends.join()));
      if (!settled || !same) {
        throw new Error(
          `the ledger's batch ${batchId} of coordinator ${this.chain.coordinator} (root ${settled?.root ?? "unknown"}) is not this database's batch ${batchId} (root ${payload.root}): this database does not hold the settlement history of that account; start the coordinator with its own database`,
        );
      }
      await this.confirm(batchId, settled.hash);
      this.log.info({ batchId, txHash: settled.hash }, "settlement batch was already on chain; recorded it");
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
    const request = await this.chain.simulateSettle(call).catch(async (err: Error) => {
      const reason = revertReason(err);
      if (reason && CONTENT_ERRORS.has(reason)) return this.discard(batchId, reason);
      throw err;
    });
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
        if (receipt.status !== "success") {
          if ((await this.chain.lastBatch()) < batchId) return this.discard(batchId, `transaction ${hash} reverted`);
          throw new Error(`settlement of batch ${batchId} reverted (${hash})`);
        }
        await this.confirm(batchId, hash);
        this.log.info({ batchId, txHash: hash, gasUsed: receipt.gasUsed.toString() }, "settlement confirmed");
        return;
      }
      // an earlier attempt may have been mined meanwhile
      if ((await this.chain.lastBatch()) >= batchId) return this.post(batchId, payload);
      if (attempt >= MAX_SENDS - 1) throw new Error(`settlement of batch ${batchId} is still not mined after ${attempt + 1} attempts`);
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
