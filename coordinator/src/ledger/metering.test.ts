import { storageBackends, waitFor } from "@sharedllm/testkit";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { type Db, openDatabase } from "../db/database.js";
import type { Escrow, LedgerChain } from "./chain.js";
import { DEFAULT_PRICING, Metering } from "./metering.js";

const user = "0x00000000000000000000000000000000000000aa";

/** The chain's word on the user's escrow: all this test needs of a ledger. */
function escrowOf(deposited: bigint): LedgerChain {
  const escrow: Escrow = { deposited, spent: 0n, pendingWithdrawal: 0n, unlockAt: 0n };
  return { escrow: async () => escrow } as unknown as LedgerChain;
}

/** The journal's sums for the user, and the running totals a hold reads: they must agree. */
async function totals(db: Db) {
  const { rows } = await sql<{ kind: string; total: string }>`
    select kind, sum(amount) as total from ledger_entries where address = ${user} group by kind`.execute(db);
  const sum = (k: string) => BigInt(rows.find((r) => r.kind === k)?.total ?? 0);
  const account = await db.selectFrom("credit_accounts").selectAll().where("address", "=", user).executeTakeFirst();
  return {
    journal: { charged: sum("charge"), held: sum("hold") - sum("release") },
    account: { charged: BigInt(account?.charged ?? 0), held: BigInt(account?.held ?? 0) },
  };
}

describe.each(storageBackends())("credit holds on $name", ({ name, open }) => {
  it("concurrent holds of one wallet, through two coordinators on one database, never take more than the escrow", async () => {
    const db0 = await open();
    // two coordinator processes on one PostgreSQL; PGlite has one
    const dbs = [await openDatabase(db0)];
    if (name === "PostgreSQL") dbs.push(await openDatabase(db0));
    try {
      const meterings = dbs.map((db, i) => new Metering(db, escrowOf(1000n), DEFAULT_PRICING, `instance-${i}`));
      const tries = Array.from({ length: 40 }, (_, i) => (meterings[i % meterings.length] as Metering).reserve(user, `job-${i}`, 100n));
      const outcomes = await Promise.allSettled(tries);
      expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(10);
      const refused = outcomes.filter((o) => o.status === "rejected") as PromiseRejectedResult[];
      expect(refused).toHaveLength(30);
      expect(String(refused[0]?.reason)).toContain("0 are available");
      const db = dbs[0] as Db;
      expect(await totals(db)).toEqual({ journal: { charged: 0n, held: 1000n }, account: { charged: 0n, held: 1000n } });

      // a charge frees the rest of its hold; a release frees it all, once
      const metering = meterings[0] as Metering;
      const held = await db.selectFrom("ledger_entries").select("job_id").where("kind", "=", "hold").orderBy("id").execute();
      const [first, second] = held.map((h) => h.job_id as string);
      await metering.charge(user, first as string, 100n, 30n, async () => undefined);
      await metering.release(user, second as string, 100n);
      await metering.release(user, second as string, 100n);
      expect(await totals(db)).toEqual({ journal: { charged: 30n, held: 800n }, account: { charged: 30n, held: 800n } });
      expect((await metering.balance(user)).available).toBe(170n);
      await metering.reserve(user, "job-after", 170n);
      await expect(metering.reserve(user, "job-over", 1n)).rejects.toThrow(/may cost up to 1 credits/);

      // a sweep releasing a gone process's holds brings the totals down with the journal
      expect(await Metering.releaseOrphanedHolds(db, { gone: ["instance-0"] })).toBeGreaterThan(0);
      const after = await totals(db);
      expect(after.account).toEqual(after.journal);
    } finally {
      for (const db of dbs) await db.destroy();
      await db0.cleanup();
    }
  });

  it("a release the database refuses is tried again until it goes through: no hold is left while the process runs", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    const metering = new Metering(db, escrowOf(1000n), DEFAULT_PRICING, "instance-0");
    try {
      await metering.reserve(user, "job-x", 100n);
      // the database refuses releases for a while (as while its connections are cut)
      await sql`create function refuse_release() returns trigger language plpgsql as $$
        begin if new.kind = 'release' then raise exception 'the database is away'; end if; return new; end $$`.execute(db);
      await sql`create trigger refuse_release before insert on ledger_entries for each row execute function refuse_release()`.execute(db);
      await expect(metering.release(user, "job-x", 100n)).rejects.toThrow(/the database is away/);
      expect((await totals(db)).account.held).toBe(100n);
      await sql`drop trigger refuse_release on ledger_entries`.execute(db);
      await waitFor("the release to go through", async () => (await totals(db)).account.held === 0n, 5_000);
      expect(await totals(db)).toEqual({ journal: { charged: 0n, held: 0n }, account: { charged: 0n, held: 0n } });
    } finally {
      await metering.stop();
      await db.destroy();
      await db0.cleanup();
    }
  });
});
