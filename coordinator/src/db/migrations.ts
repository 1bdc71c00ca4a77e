/**
 * Schema migrations, applied in order at start-up. Never edit a released
 * migration: add the next one.
 */
import { receiptJobId } from "@sharedllm/protocol";
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from "kysely";

const migrations: Record<string, Migration> = {
  "0001_foundation": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("api_keys")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("key_hash", "text", (c) => c.notNull().unique())
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("revoked_at", "timestamptz")
        .execute();
      await db.schema
        .createTable("models")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("sha256", "text", (c) => c.notNull())
        .addColumn("first_seen_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema
        .createTable("nodes")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("engine", "text", (c) => c.notNull())
        .addColumn("first_seen_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("last_seen_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema
        .createTable("jobs")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("api_key_id", "text", (c) => c.notNull().references("api_keys.id"))
        .addColumn("node_id", "text")
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("stream", "boolean", (c) => c.notNull())
        .addColumn("prompt_tokens", "integer")
        .addColumn("completion_tokens", "integer")
        .addColumn("error", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("finished_at", "timestamptz")
        .execute();
      await db.schema.createIndex("jobs_status").on("jobs").column("status").execute();
    },
  },
  "0002_node_sessions": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("node_sessions")
        .addColumn("token_hash", "text", (c) => c.primaryKey())
        .addColumn("node_id", "text", (c) => c.notNull().references("nodes.id"))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema.createIndex("node_sessions_node").on("node_sessions").column("node_id").execute();
    },
  },
  "0003_events": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("events")
        .addColumn("id", "bigserial", (c) => c.primaryKey())
        .addColumn("at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("node_id", "text")
        .addColumn("data", "text", (c) => c.notNull().defaultTo("{}"))
        .execute();
      await db.schema.createIndex("events_node").on("events").columns(["node_id", "id"]).execute();
    },
  },
  "0004_model_sources": {
    async up(db: Kysely<unknown>) {
      await db.schema.alterTable("models").addColumn("source", "text").execute();
      await db.schema.alterTable("models").addColumn("size_bytes", "bigint").execute();
    },
  },
  "0005_ledger": {
    async up(db: Kysely<unknown>) {
      // keys made by a signed-in wallet are bound to it and spend its credits;
      // keys without an owner are the operator's (unmetered)
      await db.schema.alterTable("api_keys").addColumn("owner_address", "text").execute();
      await db.schema.createIndex("api_keys_owner").on("api_keys").column("owner_address").execute();
      await db.schema
        .createTable("siwe_nonces")
        .addColumn("nonce", "text", (c) => c.primaryKey())
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("web_sessions")
        .addColumn("token_hash", "text", (c) => c.primaryKey())
        .addColumn("address", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .execute();
      // the append-only credit journal: balances are derived from it, rows are never changed
      await db.schema
        .createTable("ledger_entries")
        .addColumn("id", "bigserial", (c) => c.primaryKey())
        .addColumn("address", "text", (c) => c.notNull())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("amount", sql`numeric(78, 0)`, (c) => c.notNull())
        .addColumn("job_id", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema.createIndex("ledger_entries_address").on("ledger_entries").columns(["address", "kind"]).execute();
      await db.schema.createIndex("ledger_entries_job").on("ledger_entries").column("job_id").execute();
      await db.schema
        .createTable("receipts")
        .addColumn("id", "bigserial", (c) => c.primaryKey())
        .addColumn("job_id", "text", (c) => c.notNull())
        .addColumn("node_address", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("reason", "text")
        .addColumn("receipt", "text", (c) => c.notNull())
        .addColumn("signature", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await sql`create unique index receipts_accepted_once on receipts (job_id, node_address) where status = 'accepted'`.execute(db);
      await db.schema
        .createTable("settlements")
        .addColumn("batch_id", "integer", (c) => c.primaryKey())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("max_entry_id", "bigint", (c) => c.notNull())
        .addColumn("payload", "text", (c) => c.notNull())
        .addColumn("tx_hash", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("confirmed_at", "timestamptz")
        .execute();
      await db.schema
        .createTable("meta")
        .addColumn("key", "text", (c) => c.primaryKey())
        .addColumn("value", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0006_settlement_entries": {
    async up(db: Kysely<unknown>) {
      // which batch took each charge and earning: a batch takes the entries no batch has taken yet,
      // so one committed late (PostgreSQL commits out of id order) goes into the next batch
      // instead of below an id watermark that was already passed
      await db.schema
        .createTable("batch_entries")
        .addColumn("entry_id", "bigint", (c) => c.primaryKey())
        .addColumn("batch_id", "integer", (c) => c.notNull())
        // the job as receipts name it (receiptJobId): what ties a job's earnings to its charge
        .addColumn("job_key", "text")
        .execute();
      await db.schema.createIndex("batch_entries_batch").on("batch_entries").column("batch_id").execute();
      await db.schema.createIndex("batch_entries_job").on("batch_entries").column("job_key").execute();
      // entries a batch cannot carry (they would make it revert, or pay more than was spent), kept out
      // of every batch with the reason, for the operator
      await db.schema
        .createTable("set_aside_entries")
        .addColumn("entry_id", "bigint", (c) => c.primaryKey())
        .addColumn("job_key", "text")
        .addColumn("reason", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema.createIndex("set_aside_entries_job").on("set_aside_entries").column("job_key").execute();
      await db.schema.createIndex("ledger_entries_kind").on("ledger_entries").columns(["kind", "id"]).execute();
      // batches made before this migration covered every charge and earning up to their max_entry_id
      const taken = await sql<{ id: string; kind: string; job_id: string | null; batch_id: number }>`
        select e.id, e.kind, e.job_id, (select min(s.batch_id) from settlements s where s.max_entry_id >= e.id) as batch_id
        from ledger_entries e
        where e.kind in ('charge', 'earn') and e.id <= (select max(max_entry_id) from settlements)
      `.execute(db);
      const rows = taken.rows.map((r) => ({
        entry_id: String(r.id),
        batch_id: r.batch_id,
        // receipts name a job by the hash of its id; earnings already carry it
        job_key: r.job_id === null ? null : r.kind === "charge" ? receiptJobId(r.job_id) : r.job_id.toLowerCase(),
      }));
      for (let i = 0; i < rows.length; i += 1000) {
        await (db as Kysely<{ batch_entries: (typeof rows)[number] }>)
          .insertInto("batch_entries")
          .values(rows.slice(i, i + 1000))
          .execute();
      }
    },
  },
  // what a restart used to forget (registration nonces, receipt proposals) or take from another process (holds)
  "0007_durable_state": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("site_nonces")
        .addColumn("nonce", "text", (c) => c.primaryKey())
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema
        .createTable("receipt_proposals")
        .addColumn("job_id", "text", (c) => c.notNull())
        .addColumn("node_address", "text", (c) => c.notNull())
        .addColumn("receipt", "text", (c) => c.notNull())
        .addColumn("job_ref", "text", (c) => c.notNull())
        .addColumn("via", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addPrimaryKeyConstraint("receipt_proposals_pk", ["job_id", "node_address"])
        .execute();
      // which coordinator process holds credits for a job: only a gone one's holds are released
      await db.schema
        .createTable("coordinator_instances")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("started_at", "timestamptz", (c) => c.notNull())
        .addColumn("seen_at", "timestamptz", (c) => c.notNull())
        .execute();
      await db.schema.alterTable("ledger_entries").addColumn("instance_id", "text").execute();
      // a job's hold is released once, whoever releases it (the job's end, or a sweep after its coordinator went)
      await sql`create unique index ledger_entries_one_release on ledger_entries (job_id) where kind = 'release'`.execute(db);
    },
  },
  "0008_audits": {
    async up(db: Kysely<unknown>) {
      // an audit of one node's part of a paid job (docs/verification.md), with its evidence
      await db.schema
        .createTable("audits")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("job_id", "text", (c) => c.notNull())
        .addColumn("node_id", "text", (c) => c.notNull())
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("model_sha256", "text", (c) => c.notNull())
        .addColumn("kind", "text", (c) => c.notNull())
        .addColumn("request", "text", (c) => c.notNull())
        .addColumn("output", "text", (c) => c.notNull())
        .addColumn("positions", "text", (c) => c.notNull())
        .addColumn("prompt_tokens", "integer")
        .addColumn("prompt_hash", "text", (c) => c.notNull())
        .addColumn("output_hash", "text", (c) => c.notNull())
        .addColumn("canary", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("auditor_id", "text")
        .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("reason", "text")
        .addColumn("scores", "text")
        .addColumn("audited_prompt_tokens", "integer")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("started_at", "timestamptz")
        .addColumn("finished_at", "timestamptz")
        .execute();
      await db.schema.createIndex("audits_open").on("audits").columns(["status", "created_at"]).execute();
      await db.schema.createIndex("audits_node").on("audits").columns(["node_id", "status"]).execute();
      // each node's audit record: what drives its audit rate, its scheduling weight and its exclusion
      await db.schema
        .createTable("node_standing")
        .addColumn("node_id", "text", (c) => c.primaryKey())
        .addColumn("passed", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("failed", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("suspicion", "integer", (c) => c.notNull().defaultTo(0))
        .addColumn("excluded_at", "timestamptz")
        .addColumn("excluded_reason", "text")
        .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
    },
  },
  "0009_federation": {
    async up(db: Kysely<unknown>) {
      // nonces of signed calls from peer coordinators, kept until their signature expires (and a
      // little): a restart does not reopen a replay (docs/federation.md)
      await db.schema
        .createTable("federation_nonces")
        .addColumn("peer", "text", (c) => c.notNull())
        .addColumn("nonce", "text", (c) => c.notNull())
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addPrimaryKeyConstraint("federation_nonces_pk", ["peer", "nonce"])
        .execute();
      await db.schema.createIndex("federation_nonces_expiry").on("federation_nonces").column("expires_at").execute();
      // a peer's transaction ids: a repeated one gets the first result instead of running twice
      await db.schema
        .createTable("federation_transactions")
        .addColumn("peer", "text", (c) => c.notNull())
        .addColumn("txid", "text", (c) => c.notNull())
        .addColumn("result", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("finished_at", "timestamptz")
        .addPrimaryKeyConstraint("federation_transactions_pk", ["peer", "txid"])
        .execute();
    },
  },
  "0010_federated_jobs": {
    async up(db: Kysely<unknown>) {
      // every job forwarded to a peer (out) or run here for one (in), with the peer and the txid
      await db.schema
        .createTable("federated_jobs")
        .addColumn("direction", "text", (c) => c.notNull())
        .addColumn("peer", "text", (c) => c.notNull())
        .addColumn("txid", "text", (c) => c.notNull())
        .addColumn("job_id", "text", (c) => c.notNull())
        .addColumn("model", "text", (c) => c.notNull())
        .addColumn("status", "text", (c) => c.notNull())
        .addColumn("prompt_tokens", "integer")
        .addColumn("completion_tokens", "integer")
        .addColumn("error", "text")
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addColumn("finished_at", "timestamptz")
        .addPrimaryKeyConstraint("federated_jobs_pk", ["direction", "peer", "txid"])
        .execute();
      // where a key's jobs may run: anywhere (any), never on a peer site (site_only), only on the owner's nodes (own_nodes)
      await db.schema
        .alterTable("api_keys")
        .addColumn("policy", "text", (c) => c.notNull().defaultTo("any"))
        .execute();
    },
  },
  "0011_federation_receipts": {
    async up(db: Kysely<unknown>) {
      // on the origin: the serving site's signed receipt for a forwarded job, and whether it held
      await db.schema
        .alterTable("federated_jobs")
        .addColumn("receipt", "text")
        .addColumn("receipt_signature", "text")
        .addColumn("receipt_credits", sql`numeric(78, 0)`)
        .addColumn("receipt_status", "text")
        .addColumn("receipt_reason", "text")
        .execute();
    },
  },
  "0012_credit_accounts": {
    async up(db: Kysely<unknown>) {
      // each payer's running totals of the journal's charges and open holds, changed in the same
      // statement as the journal: a hold is one conditional update, whatever the payer's history
      await db.schema
        .createTable("credit_accounts")
        .addColumn("address", "text", (c) => c.primaryKey())
        .addColumn("charged", sql`numeric(78, 0)`, (c) => c.notNull().defaultTo(0))
        .addColumn("held", sql`numeric(78, 0)`, (c) => c.notNull().defaultTo(0))
        .execute();
      await sql`
        insert into credit_accounts (address, charged, held)
        select address,
               coalesce(sum(amount) filter (where kind = 'charge'), 0),
               coalesce(sum(amount) filter (where kind = 'hold'), 0) - coalesce(sum(amount) filter (where kind = 'release'), 0)
        from ledger_entries
        where kind in ('charge', 'hold', 'release')
        group by address`.execute(db);
    },
  },
  "0013_job_instances": {
    async up(db: Kysely<unknown>) {
      // which coordinator process runs a job: only a gone one's running jobs are failed
      await db.schema.alterTable("jobs").addColumn("instance_id", "text").execute();
      await sql`create index jobs_running on jobs (instance_id) where status = 'running'`.execute(db);
    },
  },
  "0014_chain_history": {
    async up(db: Kysely<unknown>) {
      // the contracts' events as the history indexer reads them (docs/indexing.md): one row per log,
      // keyed by (tx_hash, log_index), with its block, so a chain reorganisation is undone by
      // deleting the rows above the fork; the subgraph's immutable entities, under the events' names
      const amount = sql`numeric(78, 0)`;
      const events: Record<string, Array<[string, "text" | "amount" | "boolean" | "integer"]>> = {
        credit_purchases: [
          ["buyer", "text"],
          ["credits", "amount"],
          ["paid", "amount"],
          ["token", "text"],
        ],
        deposits: [
          ["user", "text"],
          ["coordinator", "text"],
          ["amount", "amount"],
        ],
        withdrawal_requests: [
          ["user", "text"],
          ["coordinator", "text"],
          ["amount", "amount"],
          ["unlock_at", "amount"],
        ],
        withdrawals: [
          ["user", "text"],
          ["coordinator", "text"],
          ["amount", "amount"],
        ],
        settlement_batches: [
          ["coordinator", "text"],
          ["batch_id", "amount"],
          ["earnings_root", "text"],
          ["batch_spent", "amount"],
          ["total_earnings", "amount"],
          ["users", "amount"],
        ],
        spend_shortfalls: [
          ["user", "text"],
          ["coordinator", "text"],
          ["posted", "amount"],
          ["covered", "amount"],
        ],
        claims: [
          ["coordinator", "text"],
          ["node", "text"],
          ["amount", "amount"],
          ["cumulative", "amount"],
        ],
        acceptances: [
          ["origin", "text"],
          ["server", "text"],
          ["cumulative", "amount"],
        ],
        site_registrations: [
          ["coordinator", "text"],
          ["public_key", "text"],
          ["key_id", "amount"],
          ["valid_until", "amount"],
          ["url", "text"],
          ["metadata", "text"],
        ],
        site_updates: [
          ["coordinator", "text"],
          ["url", "text"],
          ["metadata", "text"],
        ],
        key_renewals: [
          ["coordinator", "text"],
          ["key_id", "amount"],
          ["valid_until", "amount"],
        ],
        admissions: [["coordinator", "text"]],
        revocations: [["coordinator", "text"]],
        endorsement_changes: [
          ["site", "text"],
          ["peer", "text"],
          ["endorsed", "boolean"],
        ],
        role_changes: [
          ["role", "text"],
          ["account", "text"],
          ["sender", "text"],
          ["granted", "boolean"],
        ],
        governance_events: [
          ["name", "text"],
          ["args", "text"],
        ],
        // who a settlement batch charged, decoded from the settle call (the event names only how many)
        settlement_batch_users: [
          ["position", "integer"],
          ["user", "text"],
          ["coordinator", "text"],
          ["cumulative_spent", "amount"],
        ],
      };
      for (const [table, columns] of Object.entries(events)) {
        let t = db.schema
          .createTable(table)
          .addColumn("tx_hash", "text", (c) => c.notNull())
          .addColumn("log_index", "integer", (c) => c.notNull())
          .addColumn("block_number", "bigint", (c) => c.notNull())
          .addColumn("timestamp", "bigint", (c) => c.notNull())
          .addColumn("contract", "text", (c) => c.notNull());
        for (const [name, type] of columns) t = t.addColumn(name, type === "amount" ? amount : type, (c) => c.notNull());
        const key = table === "settlement_batch_users" ? ["tx_hash", "log_index", "position"] : ["tx_hash", "log_index"];
        await t.addPrimaryKeyConstraint(`${table}_pk`, key as never).execute();
        await db.schema.createIndex(`${table}_block`).on(table).column("block_number").execute();
      }
      for (const [table, column] of [
        ["credit_purchases", "buyer"],
        ["deposits", "user"],
        ["withdrawal_requests", "user"],
        ["withdrawals", "user"],
        ["claims", "node"],
        ["settlement_batch_users", "user"],
        ["spend_shortfalls", "user"],
      ] as const) {
        await db.schema.createIndex(`${table}_${column}`).on(table).columns([column, "block_number"]).execute();
      }
      // the indexer's place: the last block read and its hash, for the chain it reads
      await db.schema
        .createTable("indexer_cursor")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("chain", "text", (c) => c.notNull())
        .addColumn("block_number", "bigint", (c) => c.notNull())
        .addColumn("block_hash", "text", (c) => c.notNull())
        .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      // hashes of recently indexed blocks: where a reorganisation forked is the newest that still matches
      await db.schema
        .createTable("indexed_blocks")
        .addColumn("block_number", "bigint", (c) => c.primaryKey())
        .addColumn("block_hash", "text", (c) => c.notNull())
        .execute();
    },
  },
  "0015_browser_delegations": {
    async up(db: Kysely<unknown>) {
      // a browser node's session key, the wallet that delegated to it (and is paid), and the delegation (docs/browser-node.md)
      await db.schema
        .createTable("browser_delegations")
        .addColumn("session_key", "text", (c) => c.primaryKey())
        .addColumn("wallet", "text", (c) => c.notNull())
        .addColumn("coordinator", "text", (c) => c.notNull())
        .addColumn("chain_id", "integer", (c) => c.notNull())
        .addColumn("expires_at", "timestamptz", (c) => c.notNull())
        .addColumn("signature", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
    },
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

/** Applies every migration (or those up to `target`, for tests of a migration). */
export async function migrate(db: Kysely<unknown>, target?: string): Promise<void> {
  const migrator = new Migrator({ db, provider });
  const { error, results } = await (target ? migrator.migrateTo(target) : migrator.migrateToLatest());
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    throw new Error(`database migration ${failed?.migrationName ?? ""} failed: ${(error as Error)?.message ?? "unknown error"}`, {
      cause: error,
    });
  }
}
