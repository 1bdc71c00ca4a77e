import { storageBackends, waitFor } from "@sharedllm/testkit";
import { sql } from "kysely";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { ApiKeyVerifier, createApiKey } from "../apiKeys.js";
import { startCoordinator } from "../coordinator.js";
import { hashSecret } from "../credentials.js";
import { openDatabase } from "./database.js";

describe.each(storageBackends())("storage on $name", ({ open }) => {
  it("migrates once, keeps API keys only as hashes, and survives a reopen", async () => {
    const db0 = await open();
    try {
      const db = await openDatabase(db0);
      const key = await createApiKey(db, "k");
      const verifier = new ApiKeyVerifier(db);
      expect(await verifier.verify(key.secret)).toEqual({ id: key.id, name: "k", policy: "any" });
      expect(await verifier.verify(`${key.secret}x`)).toBeUndefined();
      const rows = await db.selectFrom("api_keys").selectAll().execute();
      expect(rows).toHaveLength(1);
      expect(rows[0]?.key_hash).toBe(hashSecret(key.secret));
      expect(JSON.stringify(rows)).not.toContain(key.secret);
      await db.destroy();
      // a second open runs no migration twice and sees the same data
      const again = await openDatabase(db0);
      expect(await new ApiKeyVerifier(again).verify(key.secret)).toEqual({ id: key.id, name: "k", policy: "any" });
      await again.destroy();
    } finally {
      await db0.cleanup();
    }
  });

  it("a transaction is alone: a query made while it is open is not in it, and survives its rollback", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    try {
      let opened = () => {};
      const isOpen = new Promise<void>((r) => {
        opened = r;
      });
      let finish = () => {};
      const finished = new Promise<void>((r) => {
        finish = r;
      });
      const tx = db.transaction().execute(async (t) => {
        await t.insertInto("meta").values({ key: "inside", value: "1" }).execute();
        opened();
        await finished;
        throw new Error("rolled back");
      });
      await isOpen;
      // another request's write, while the transaction is open
      const outside = db.insertInto("meta").values({ key: "outside", value: "1" }).execute();
      finish();
      await expect(tx).rejects.toThrow("rolled back");
      await outside;
      const keys = (await db.selectFrom("meta").select("key").execute()).map((r) => r.key);
      expect(keys).toContain("outside");
      expect(keys).not.toContain("inside");
    } finally {
      await db.destroy();
      await db0.cleanup();
    }
  });

  it("a revoked key stops working", async () => {
    const db0 = await open();
    try {
      const db = await openDatabase(db0);
      const key = await createApiKey(db, "k");
      await db.updateTable("api_keys").set({ revoked_at: new Date() }).where("id", "=", key.id).execute();
      expect(await new ApiKeyVerifier(db).verify(key.secret)).toBeUndefined();
      await db.destroy();
    } finally {
      await db0.cleanup();
    }
  });

  it("a coordinator restart records jobs that were in flight as failed and keeps finished ones", async () => {
    const db0 = await open();
    try {
      const db = await openDatabase(db0);
      const key = await createApiKey(db, "k");
      const base = { kind: "chat", model: "m", api_key_id: key.id, stream: false };
      await db
        .insertInto("jobs")
        .values([
          { ...base, id: "job_done", status: "completed", prompt_tokens: 3, completion_tokens: 4, finished_at: new Date() },
          { ...base, id: "job_open", status: "running" },
        ])
        .execute();
      await db.destroy();
      const c = await startCoordinator({
        host: "127.0.0.1",
        port: 0,
        joinToken: "t".repeat(43),
        logger: pino({ level: "silent" }),
        ...db0,
      });
      const jobs = await c.db.selectFrom("jobs").select(["id", "status", "error", "completion_tokens"]).orderBy("id").execute();
      await c.close();
      expect(jobs).toEqual([
        { id: "job_done", status: "completed", error: null, completion_tokens: 4 },
        { id: "job_open", status: "failed", error: "its coordinator stopped", completion_tokens: null },
      ]);
    } finally {
      await db0.cleanup();
    }
  });
});

describe.skipIf(!process.env.DATABASE_URL)("PostgreSQL connections", () => {
  it("a connection the server drops while it is checked out between queries fails its next query, and the process lives on", async () => {
    const backend = storageBackends().find((b) => b.name === "PostgreSQL");
    const database = await (backend as NonNullable<typeof backend>).open();
    const errors: string[] = [];
    const db = await openDatabase({ ...database, onConnectionError: (err) => errors.push(err.message) });
    try {
      await db.connection().execute(async (conn) => {
        const { rows } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(conn);
        // another session ends this one while it sits between queries (as the settler's does across chain calls)
        await sql`select pg_terminate_backend(${rows[0]?.pid})`.execute(db);
        await waitFor("the connection's error", () => errors.length > 0, 10_000);
        await expect(sql`select 1`.execute(conn)).rejects.toThrow();
      });
      // the pool serves the next query on a new connection
      expect((await sql<{ one: number }>`select 1 as one`.execute(db)).rows[0]?.one).toBe(1);
    } finally {
      await db.destroy();
      await database.cleanup();
    }
  });
});
