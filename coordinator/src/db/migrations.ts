/**
 * Schema migrations, applied in order at start-up. Never edit a released
 * migration: add the next one.
 */
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
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

export async function migrate(db: Kysely<unknown>): Promise<void> {
  const { error, results } = await new Migrator({ db, provider }).migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    throw new Error(`database migration ${failed?.migrationName ?? ""} failed: ${(error as Error)?.message ?? "unknown error"}`);
  }
}
