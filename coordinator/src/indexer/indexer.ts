/**
 * The embedded history indexer (docs/indexing.md): CreditLedger's and FederationRegistry's events,
 * read from the chain with viem into the coordinator's database, one row per log (entities.ts),
 * for the portal's history pages. It runs inside the coordinator, on the same database, where no
 * graph-node runs; the subgraph (subgraph/) indexes the same events for hosted use.
 *
 * Each round reads the blocks after its cursor up to `confirmations` below the head, in ranges
 * the node accepts (chainLogs.ts), with each log block's time; a settlement's users come from its
 * settle call. The rows, the hashes of the blocks read and the cursor (last block and its hash)
 * are written in one transaction, so a restart resumes where the last round ended and inserts
 * are idempotent. A round first checks that the chain still has the cursor's block; when it does
 * not, the chain reorganised: the rows above the newest block the chain still has (reorg.ts) are
 * deleted and read again. A different chain (a restarted dev chain: another genesis) starts over.
 * Replicas sharing a PostgreSQL database each poll; a transaction-scoped advisory lock and a
 * check that the cursor did not move let only one write a round.
 */
import { CreditLedger, DEV_CHAIN_ID } from "@sharedllm/contracts";
import { sql } from "kysely";
import type { Logger } from "pino";
import { type Address, createPublicClient, decodeFunctionData, type Hex, http, type PublicClient } from "viem";
import { confirmedHead, DEFAULT_LOG_RANGE, LogRanges } from "../chainLogs.js";
import type { Db } from "../db/database.js";
import { batchUserRows, CONTRACT_EVENTS, type DecodedLog, HISTORY_TABLES, type HistoryTable, rowOf } from "./entities.js";
import { forkPoint, readIsConsistent } from "./reorg.js";

export interface IndexerOptions {
  /** the chain's JSON-RPC URL */
  rpcUrl: string;
  /** CreditLedger, when credits are on */
  ledger?: Address;
  /** FederationRegistry, when known */
  registry?: Address;
  /** the contracts' deployment block: nothing before it is read. Default 0 */
  fromBlock?: bigint;
  /** how many blocks below the head it reads. Default 0 on the dev chain, else 3 (a shallower reorganisation never shows) */
  confirmations?: number;
  /** how long it waits between rounds once it has caught up. Default 2 s */
  pollMs?: number;
  /** the most blocks one log query spans (halved while the node refuses). Default 10,000 */
  maxRange?: bigint;
  /** how many blocks below the cursor keep their hash for finding a fork. Default 1,024 */
  keepBlocks?: number;
}

/** Where the indexer stands, as `GET /v1/history/status` tells it. */
export interface IndexerStatus {
  state: "stopped" | "running";
  /** the last block indexed, by any replica */
  block?: { number: bigint; hash: Hex };
  /** the last round's failure, while it lasts */
  lastError?: string;
  /** reorganisations undone since start */
  reorgs: number;
}

/** The cursor's row id: one history per database. */
const CURSOR = "history";
/** pg_advisory_xact_lock key of the history writer ("SLLMHIST") */
const LOCK = 0x534c4c4d48495354n;
/** rows per insert statement */
const CHUNK = 500;

interface Cursor {
  chain: string;
  number: bigint;
  hash: Hex;
}

export class Indexer {
  private client: PublicClient;
  /** aborts the chain requests in flight when the indexer stops */
  private abort = new AbortController();
  private readonly ranges: LogRanges;
  private state: IndexerStatus["state"] = "stopped";
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private identity: string | undefined;
  private confirmations: number | undefined;
  private lastError: string | undefined;
  private reorgs = 0;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly o: IndexerOptions,
  ) {
    this.client = this.connect();
    this.ranges = new LogRanges(o.maxRange);
  }

  private connect(): PublicClient {
    const transport = http(this.o.rpcUrl, { retryCount: 2, timeout: 15_000, fetchOptions: { signal: this.abort.signal } });
    return createPublicClient({ transport }) as PublicClient;
  }

  private get contracts(): Address[] {
    return [this.o.ledger, this.o.registry].filter((a): a is Address => Boolean(a));
  }

  /** Starts polling: a round now, then one every pollMs after each ends. */
  start(): void {
    if (this.state === "running" || this.contracts.length === 0) return;
    if (this.abort.signal.aborted) {
      this.abort = new AbortController();
      this.client = this.connect();
    }
    this.state = "running";
    this.schedule(0);
  }

  /** Stops polling, and the round in flight: its chain requests are aborted (it writes nothing). */
  async stop(): Promise<void> {
    this.state = "stopped";
    clearTimeout(this.timer);
    this.abort.abort();
    await this.round;
  }

  /** Where it stands (the cursor as the database has it). */
  async status(): Promise<IndexerStatus> {
    const c = await this.cursor();
    return { state: this.state, block: c && { number: c.number, hash: c.hash }, lastError: this.lastError, reorgs: this.reorgs };
  }

  private schedule(ms: number): void {
    if (this.state !== "running") return;
    this.timer = setTimeout(() => {
      this.round = this.runRound().finally(() => {
        this.round = undefined;
      });
    }, ms);
  }

  private async runRound(): Promise<void> {
    let caughtUp = true;
    try {
      caughtUp = await this.step();
      this.lastError = undefined;
    } catch (err) {
      if (this.state === "stopped") return;
      const message = (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";
      if (message !== this.lastError) this.log.warn({ err: message }, "indexing the chain's history failed; it is tried again");
      this.lastError = message;
    }
    this.schedule(caughtUp ? (this.o.pollMs ?? 2_000) : 0);
  }

  /** One round; true when it caught up with the head (or could not go on), false when more blocks wait. */
  private async step(): Promise<boolean> {
    const identity = await this.chainIdentity();
    let cursor = await this.cursor();
    if (cursor && cursor.chain !== identity) {
      this.log.warn("the chain is not the one the history was read from (a restarted dev chain?): the history starts over");
      await this.write(cursor, async (tx) => {
        for (const t of [...HISTORY_TABLES, "indexed_blocks"] as const) await tx.deleteFrom(t).execute();
        await tx.deleteFrom("indexer_cursor").where("id", "=", CURSOR).execute();
      });
      cursor = undefined;
    }
    const head = await confirmedHead(this.client, this.confirmations);
    if (cursor) {
      // a node behind the block last read (one of a load-balanced set) has not reorganised: wait for it
      if (cursor.number > head) return true;
      const hash = await this.hashAt(cursor.number);
      if (hash === undefined) return true;
      if (hash !== cursor.hash) {
        await this.rollBack(cursor);
        return false;
      }
    }
    const from = cursor ? cursor.number + 1n : (this.o.fromBlock ?? 0n);
    if (from > head) return true;
    const span = this.o.maxRange ?? DEFAULT_LOG_RANGE;
    const to = from + span - 1n < head ? from + span - 1n : head;
    const before = await this.hashAt(to);
    const logs = (await this.ranges.read(from, to, (fromBlock, toBlock) =>
      this.client.getLogs({ address: this.contracts, events: CONTRACT_EVENTS, fromBlock, toBlock }),
    )) as unknown as (DecodedLog & { blockHash: Hex })[];
    const blocks = new Map<bigint, { hash: Hex; timestamp: bigint }>();
    for (const n of new Set(logs.map((l) => l.blockNumber))) {
      const b = await this.client.getBlock({ blockNumber: n });
      blocks.set(n, { hash: b.hash, timestamp: b.timestamp });
    }
    const rows = new Map<HistoryTable, Record<string, unknown>[]>();
    const add = (table: HistoryTable, row: Record<string, unknown>) => {
      const list = rows.get(table);
      if (list) list.push(row);
      else rows.set(table, [row]);
    };
    for (const l of logs) {
      const time = blocks.get(l.blockNumber)?.timestamp ?? 0n;
      const r = rowOf(l, time);
      if (!r) continue;
      add(r.table, r.row);
      if (l.eventName === "BatchSettled")
        for (const u of batchUserRows(l, time, await this.settleCall(l))) add("settlement_batch_users", u);
    }
    const after = await this.hashAt(to);
    const hashes = new Map([...blocks].map(([n, b]) => [n, b.hash]));
    // the chain moved under the read: read again at the next round
    if (!before || !after || !readIsConsistent(logs, hashes, { before, after })) return true;
    // it reorganised below the cursor meanwhile: this read is of the new chain, on top of rows of
    // the old one; the next round undoes those first
    if (cursor && (await this.hashAt(cursor.number)) !== cursor.hash) return false;
    hashes.set(to, after);
    const keep = BigInt(this.o.keepBlocks ?? 1_024);
    await this.write(cursor, async (tx) => {
      for (const [table, list] of rows) {
        for (let i = 0; i < list.length; i += CHUNK) {
          await tx
            .insertInto(table)
            .values(list.slice(i, i + CHUNK) as never)
            .onConflict((c) => c.doNothing())
            .execute();
        }
      }
      await tx
        .insertInto("indexed_blocks")
        .values([...hashes].map(([n, hash]) => ({ block_number: n, block_hash: hash })))
        .onConflict((c) => c.column("block_number").doUpdateSet((eb) => ({ block_hash: eb.ref("excluded.block_hash") })))
        .execute();
      await tx
        .deleteFrom("indexed_blocks")
        .where("block_number", "<", (to - keep).toString())
        .execute();
      await this.setCursor(tx, { chain: identity, number: to, hash: after });
    });
    return to === head;
  }

  /** Undoes what was read from blocks the chain no longer has. */
  private async rollBack(cursor: Cursor): Promise<void> {
    const kept = (await this.db.selectFrom("indexed_blocks").select(["block_number", "block_hash"]).execute()).map((b) => ({
      number: BigInt(b.block_number),
      hash: b.block_hash as Hex,
    }));
    let fork = await forkPoint(kept, (n) => this.hashAt(n));
    // deeper than every kept hash: read again from below the oldest kept block, not from the start
    const oldest = kept.reduce<bigint | undefined>((m, b) => (m === undefined || b.number < m ? b.number : m), undefined);
    if (!fork && oldest !== undefined && oldest - 1n >= (this.o.fromBlock ?? 0n)) {
      const hash = await this.hashAt(oldest - 1n);
      if (hash) fork = { number: oldest - 1n, hash };
    }
    this.reorgs++;
    this.log.warn(
      { from: cursor.number.toString(), to: fork?.number.toString() ?? "the start" },
      "the chain reorganised: the history above the fork is read again",
    );
    await this.write(cursor, async (tx) => {
      const above = fork ? fork.number.toString() : "-1";
      for (const t of HISTORY_TABLES) await tx.deleteFrom(t).where("block_number", ">", above).execute();
      await tx.deleteFrom("indexed_blocks").where("block_number", ">", above).execute();
      if (fork) await this.setCursor(tx, { chain: cursor.chain, number: fork.number, hash: fork.hash });
      else await tx.deleteFrom("indexer_cursor").where("id", "=", CURSOR).execute();
    });
  }

  /** Runs `write` in a transaction that holds the history lock, unless another replica moved the cursor since `seen`. */
  private async write(seen: Cursor | undefined, write: (tx: Db) => Promise<void>): Promise<void> {
    await this.db.transaction().execute(async (tx) => {
      const { rows } = await sql<{ locked: boolean }>`select pg_try_advisory_xact_lock(${sql.raw(LOCK.toString())}) as locked`.execute(tx);
      if (!rows[0]?.locked) return;
      const now = await this.cursor(tx);
      if (now?.number !== seen?.number || now?.hash !== seen?.hash) return;
      await write(tx);
    });
  }

  private async setCursor(tx: Db, c: Cursor): Promise<void> {
    const row = { id: CURSOR, chain: c.chain, block_number: c.number, block_hash: c.hash, updated_at: new Date() };
    await tx
      .insertInto("indexer_cursor")
      .values(row)
      .onConflict((oc) =>
        oc.column("id").doUpdateSet({ chain: c.chain, block_number: c.number, block_hash: c.hash, updated_at: new Date() }),
      )
      .execute();
  }

  private async cursor(db: Db = this.db): Promise<Cursor | undefined> {
    const r = await db.selectFrom("indexer_cursor").selectAll().where("id", "=", CURSOR).executeTakeFirst();
    return r && { chain: r.chain, number: BigInt(r.block_number), hash: r.block_hash as Hex };
  }

  /** The chain's hash at a height; undefined above its head. */
  private async hashAt(n: bigint): Promise<Hex | undefined> {
    const b = await this.client.getBlock({ blockNumber: n }).catch((err: Error) => {
      if (err.name === "BlockNotFoundError") return undefined;
      throw err;
    });
    return b?.hash ?? undefined;
  }

  /** Chain id, contracts and genesis: what the history was read from (read once). */
  private async chainIdentity(): Promise<string> {
    if (!this.identity) {
      const [chainId, genesis] = await Promise.all([this.client.getChainId(), this.client.getBlock({ blockNumber: 0n })]);
      this.confirmations = this.o.confirmations ?? (chainId === DEV_CHAIN_ID ? 0 : 3);
      this.identity = [chainId, ...this.contracts.map((a) => a.toLowerCase()), genesis.hash].join(":");
    }
    return this.identity;
  }

  /**
   * The users and cumulative spend (as posted) of the settle call that emitted `log`; none when it
   * was not a direct call of the ledger's settle for that batch with that many users (a multisig,
   * another contract, several batches in one transaction), or the node cannot find the transaction.
   */
  private async settleCall(log: DecodedLog): Promise<{ users: readonly Address[]; cumulativeSpent: readonly bigint[] }> {
    const none = { users: [], cumulativeSpent: [] };
    const tx = await this.client.getTransaction({ hash: log.transactionHash }).catch(() => undefined);
    if (!tx || tx.to?.toLowerCase() !== this.o.ledger?.toLowerCase()) return none;
    try {
      const call = decodeFunctionData({ abi: CreditLedger.abi, data: tx.input });
      const args = log.args as { batchId?: bigint; users?: bigint };
      if (call.functionName !== "settle" || call.args[0] !== args.batchId || BigInt(call.args[1].length) !== args.users) return none;
      return { users: call.args[1], cumulativeSpent: call.args[2] };
    } catch {
      return none;
    }
  }
}
