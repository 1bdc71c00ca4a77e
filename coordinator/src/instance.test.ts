import { storageBackends } from "@sharedllm/testkit";
import { describe, expect, it } from "vitest";
import { createApiKey } from "./apiKeys.js";
import { type Db, openDatabase } from "./db/database.js";
import { InstanceLease } from "./instance.js";
import { JobTable } from "./jobs/records.js";
import { Metering } from "./ledger/metering.js";

/** A coordinator's lease, last renewed a minute ago: lapsed. */
const lapse = (db: Db, id: string) =>
  db
    .updateTable("coordinator_instances")
    .set({ seen_at: new Date(Date.now() - 60_000) })
    .where("id", "=", id)
    .execute();

describe.each(storageBackends())("coordinator leases on $name", ({ open }) => {
  it("a starting coordinator releases the holds of gone coordinators only, never those of one still running", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    try {
      const running = await InstanceLease.take(db, false);
      const gone = await InstanceLease.take(db, false);
      await lapse(db, gone.id);
      const hold = (job: string, instance: string | null) => ({
        address: "0xa",
        kind: "hold" as const,
        amount: 10n,
        job_id: job,
        instance_id: instance,
      });
      await db
        .insertInto("ledger_entries")
        .values([hold("j-running", running.id), hold("j-gone", gone.id), hold("j-old", null)])
        .execute();
      const released = async () =>
        (await db.selectFrom("ledger_entries").select("job_id").where("kind", "=", "release").orderBy("job_id").execute()).map(
          (r) => r.job_id,
        );

      // another coordinator starts on the same database
      const starting = await InstanceLease.take(db, false);
      expect(await Metering.releaseOrphanedHolds(db, { live: await starting.live() })).toBe(2);
      expect(await released()).toEqual(["j-gone", "j-old"]);
      await starting.forget(await starting.lapsed());
      // running's jobs are its own to end: a sweep finds no lapsed lease
      expect(await starting.lapsed()).toEqual([]);
      expect(await Metering.releaseOrphanedHolds(db, { gone: await starting.lapsed() })).toBe(0);
      // once its lease lapses, its holds are released once
      await lapse(db, running.id);
      const lapsed = await starting.lapsed();
      expect(lapsed).toEqual([running.id]);
      expect(await Metering.releaseOrphanedHolds(db, { gone: lapsed })).toBe(1);
      await starting.forget(lapsed);
      expect(await released()).toEqual(["j-gone", "j-old", "j-running"]);
      // the job that process was running ends after all: no second release, the hold is not counted twice
      await db
        .insertInto("ledger_entries")
        .values({ address: "0xa", kind: "release", amount: 10n, job_id: "j-running" })
        .onConflict((oc) => oc.column("job_id").where("kind", "=", "release").doNothing())
        .execute();
      expect(await released()).toEqual(["j-gone", "j-old", "j-running"]);
      // and a process that stalled past its lease takes it again when it renews
      await running.renew();
      expect(await starting.live()).toContain(running.id);
    } finally {
      await db.destroy();
      await db0.cleanup();
    }
  });

  it("a starting coordinator fails the jobs gone coordinators left running, never those a live one runs", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    try {
      const running = await InstanceLease.take(db, false);
      const gone = await InstanceLease.take(db, false);
      await lapse(db, gone.id);
      const key = await createApiKey(db, "k");
      const job = (id: string, instance: string | null, status: "running" | "completed" = "running") => ({
        id,
        kind: "chat",
        model: "m",
        api_key_id: key.id,
        stream: true,
        status,
        instance_id: instance,
      });
      await db
        .insertInto("jobs")
        .values([job("j-running", running.id), job("j-gone", gone.id), job("j-old", null), job("j-done", gone.id, "completed")])
        .execute();
      const statuses = async () =>
        Object.fromEntries((await db.selectFrom("jobs").select(["id", "status"]).execute()).map((r) => [r.id, r.status]));

      const starting = await InstanceLease.take(db, false);
      expect(await JobTable.failOrphaned(db, { live: await starting.live() })).toBe(2);
      expect(await statuses()).toEqual({ "j-running": "running", "j-gone": "failed", "j-old": "failed", "j-done": "completed" });
      // once the running one's lease lapses, a sweep fails its job
      await lapse(db, running.id);
      expect(await JobTable.failOrphaned(db, { gone: await starting.lapsed() })).toBe(1);
      expect((await statuses())["j-running"]).toBe("failed");
    } finally {
      await db.destroy();
      await db0.cleanup();
    }
  });

  it("on a database only this process can open, every other lease is gone", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    try {
      const earlier = await InstanceLease.take(db, false);
      const now = await InstanceLease.take(db, true);
      expect(await now.live()).toEqual([now.id]);
      await earlier.end();
      expect(await db.selectFrom("coordinator_instances").select("id").execute()).toEqual([{ id: now.id }]);
    } finally {
      await db.destroy();
      await db0.cleanup();
    }
  });
});
