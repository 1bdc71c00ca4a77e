/**
 * Opens the coordinator's database: embedded PGlite under `$SHAREDLLM_HOME/db`
 * by default, PostgreSQL when a `DATABASE_URL` is given. Migrations run on open.
 */
import { mkdir } from "node:fs/promises";
import { Kysely, PostgresDialect } from "kysely";
import { KyselyPGlite } from "kysely-pglite";
import pg from "pg";
import { migrate } from "./migrations.js";
import type { Database } from "./schema.js";

export type Db = Kysely<Database>;

export interface DatabaseOptions {
  /** PostgreSQL connection string; when absent, PGlite in dataDir */
  databaseUrl?: string;
  /** PGlite data folder, or `memory://` */
  dataDir: string;
  /** told about errors of idle PostgreSQL connections (server restart, terminated backend) */
  onConnectionError?: (err: Error) => void;
}

export async function openDatabase(o: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (o.databaseUrl) {
    const pool = new pg.Pool({ connectionString: o.databaseUrl, max: 10 });
    // without a listener, an idle connection the server drops would crash the process;
    // the pool replaces it on the next query
    pool.on("error", (err) => o.onConnectionError?.(err));
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  } else {
    const memory = o.dataDir.startsWith("memory://");
    if (!memory) await mkdir(o.dataDir, { recursive: true });
    // in memory: no folder (given "memory://", kysely-pglite would make a folder of that name)
    const { dialect } = await KyselyPGlite.create(memory ? undefined : o.dataDir);
    db = new Kysely<Database>({ dialect });
  }
  await migrate(db as Kysely<unknown>);
  return db;
}
