/** Shared test helpers: temporary homes, conditions with deadlines, quiet loggers, the CLI. */
import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Coordinator } from "@sharedllm/coordinator";
import { resolvePaths } from "@sharedllm/node";
import { sql } from "kysely";
import { pino } from "pino";

/** A free TCP port on loopback (for a dev chain or a server a test starts). */
export { freePort } from "@sharedllm/node";

const BIN = join(import.meta.dirname, "..", "cli", "bin", "sharedllm.js");

/** Runs `sharedllm <args>` as a user would, with `env` added to this process's; resolves with its exit code and output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b) => {
    stdout += b;
  });
  child.stderr.on("data", (b) => {
    stderr += b;
  });
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}

/** A fresh SHAREDLLM_HOME sharing the machine's cache. */
export async function tempPaths(prefix = "sharedllm-test-") {
  const home = await mkdtemp(join(tmpdir(), prefix));
  return { home, cache: resolvePaths().cache, cleanup: () => rm(home, { recursive: true, force: true }) };
}

export const quietLogger = () => pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });

/** Polls until check() returns a truthy value, or fails after timeoutMs with what it was waiting for. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `parent`'s child process named `name` (Linux /proc): its pid, and its CPU time so far in clock ticks. */
export async function childStat(parent: number, name: string): Promise<{ pid: number; ticks: number }> {
  for (const pid of await readdir("/proc")) {
    const stat = (await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "")).trim();
    // pid (comm) state ppid ... utime stime (fields 14 and 15)
    const m = /^\d+ \((.*)\) (.*)$/.exec(stat);
    const f = m?.[2]?.split(" ");
    if (m?.[1] === name && f && Number(f[1]) === parent) return { pid: Number(pid), ticks: Number(f[11]) + Number(f[12]) };
  }
  throw new Error(`no ${name} child of ${parent}`);
}

export interface TestDatabase {
  databaseUrl?: string;
  dataDir: string;
  cleanup: () => Promise<void>;
}

async function pgliteDatabase(): Promise<TestDatabase> {
  const paths = await tempPaths("sharedllm-db-");
  return { dataDir: join(paths.home, "db"), cleanup: paths.cleanup };
}

/** A fresh database on the PostgreSQL server of `adminUrl`, dropped by cleanup. */
async function postgresDatabase(adminUrl: string): Promise<TestDatabase> {
  const { default: pg } = await import("pg");
  const name = `sharedllm_test_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return { databaseUrl: url.toString(), dataDir: "unused", cleanup: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/** The database a coordinator under test uses: PostgreSQL when DATABASE_URL is set, else PGlite. */
export function testDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env.DATABASE_URL;
  return adminUrl ? postgresDatabase(adminUrl) : pgliteDatabase();
}

/** Both storage backends (PostgreSQL only when DATABASE_URL is set), for tests of storage itself. */
export function storageBackends(): { name: string; open: () => Promise<TestDatabase> }[] {
  const adminUrl = process.env.DATABASE_URL;
  return [{ name: "PGlite", open: pgliteDatabase }, ...(adminUrl ? [{ name: "PostgreSQL", open: () => postgresDatabase(adminUrl) }] : [])];
}

/** A coordinator's credit journal: the sum of one kind of entry for an address (smallest unit). */
export async function journalSum(db: Coordinator["db"], address: string, kind: "charge" | "earn" | "hold" | "release"): Promise<bigint> {
  const row = await db
    .selectFrom("ledger_entries")
    .select(sql<string | null>`sum(amount)`.as("total"))
    .where("address", "=", address.toLowerCase())
    .where("kind", "=", kind)
    .executeTakeFirstOrThrow();
  return BigInt(row.total ?? 0);
}
