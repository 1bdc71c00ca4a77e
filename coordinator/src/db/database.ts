/**
 * Opens the coordinator's database: embedded PGlite under `$SHAREDLLM_HOME/db`
 * by default, PostgreSQL when a `DATABASE_URL` is given. Migrations run on open.
 *
 * PGlite has one connection. Kysely takes a connection for each query and keeps it for a whole
 * transaction; PGlite's driver lends the one connection to every taker at once, so a query made
 * while another job's transaction was open ran inside it, and was lost with it on a rollback.
 * Here the connection is lent to one taker at a time (as Kysely does for SQLite): a transaction
 * is alone on it from BEGIN to COMMIT. Code inside a transaction must use its `tx`, never the
 * database itself, which would wait for the transaction it is in.
 */
import { mkdir } from "node:fs/promises";
import { type DatabaseConnection, type Dialect, type Driver, Kysely, PostgresDialect } from "kysely";
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
  /** told about errors of PostgreSQL connections between queries (server restart, terminated backend) */
  onConnectionError?: (err: Error) => void;
}

export async function openDatabase(o: DatabaseOptions): Promise<Db> {
  let db: Db;
  if (o.databaseUrl) {
    const pool = new pg.Pool({ connectionString: o.databaseUrl, max: 10 });
    // without a listener, a connection the server drops would crash the process: an idle one's
    // error goes to the pool, which replaces it on the next query; one checked out between
    // queries (the settler holds one across chain calls) has its error on the connection itself,
    // and its next query fails
    pool.on("error", (err) => o.onConnectionError?.(err));
    pool.on("connect", (client) => client.on("error", (err) => o.onConnectionError?.(err)));
    db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  } else {
    const memory = o.dataDir.startsWith("memory://");
    if (!memory) await mkdir(o.dataDir, { recursive: true });
    // in memory: no folder (given "memory://", kysely-pglite would make a folder of that name)
    const { dialect } = await KyselyPGlite.create(memory ? undefined : o.dataDir);
    db = new Kysely<Database>({ dialect: oneAtATime(dialect) });
  }
  await migrate(db as Kysely<unknown>);
  return db;
}

/** `dialect` with its driver's one connection lent to one taker at a time. */
function oneAtATime(dialect: Dialect): Dialect {
  return {
    createAdapter: () => dialect.createAdapter(),
    createDriver: () => new SerialDriver(dialect.createDriver()),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createQueryCompiler: () => dialect.createQueryCompiler(),
  };
}

class SerialDriver implements Driver {
  /** settles when the connection is free again */
  private free: Promise<void> = Promise.resolve();
  private readonly releases = new Map<DatabaseConnection, () => void>();

  constructor(private readonly inner: Driver) {}

  init(): Promise<void> {
    return this.inner.init();
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    const taken = this.free;
    let release = () => {};
    this.free = new Promise((resolve) => {
      release = resolve;
    });
    await taken;
    try {
      const connection = await this.inner.acquireConnection();
      this.releases.set(connection, release);
      return connection;
    } catch (err) {
      release();
      throw err;
    }
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    await this.inner.releaseConnection(connection);
    this.releases.get(connection)?.();
    this.releases.delete(connection);
  }

  beginTransaction(connection: DatabaseConnection, settings: Parameters<Driver["beginTransaction"]>[1]): Promise<void> {
    return this.inner.beginTransaction(connection, settings);
  }

  commitTransaction(connection: DatabaseConnection): Promise<void> {
    return this.inner.commitTransaction(connection);
  }

  rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    return this.inner.rollbackTransaction(connection);
  }

  destroy(): Promise<void> {
    return this.inner.destroy();
  }
}
