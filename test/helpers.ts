/** Shared test helpers: temporary homes, conditions with deadlines, quiet loggers. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { resolvePaths } from "../node/src/paths.ts";

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

/**
 * The storage backends a test should run on: PGlite always, and PostgreSQL when
 * DATABASE_URL is set (each call gets a fresh database there, dropped by cleanup).
 */
export function storageBackends(): {
  name: string;
  open: () => Promise<{ databaseUrl?: string; dataDir: string; cleanup: () => Promise<void> }>;
}[] {
  const backends: ReturnType<typeof storageBackends> = [
    {
      name: "PGlite",
      open: async () => {
        const paths = await tempPaths("sharedllm-db-");
        return { dataDir: join(paths.home, "db"), cleanup: paths.cleanup };
      },
    },
  ];
  const admin = process.env.DATABASE_URL;
  if (admin) {
    backends.push({
      name: "PostgreSQL",
      open: async () => {
        const { default: pg } = await import("pg");
        const name = `sharedllm_test_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
        const client = new pg.Client({ connectionString: admin });
        await client.connect();
        await client.query(`CREATE DATABASE ${name}`);
        await client.end();
        const url = new URL(admin);
        url.pathname = `/${name}`;
        return {
          databaseUrl: url.toString(),
          dataDir: "unused",
          cleanup: async () => {
            const c = new pg.Client({ connectionString: admin });
            await c.connect();
            await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
            await c.end();
          },
        };
      },
    });
  }
  return backends;
}
