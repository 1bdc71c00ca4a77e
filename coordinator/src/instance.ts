/**
 * This coordinator process's lease in its database. Several coordinators may share one
 * PostgreSQL database (and one process may follow another on the same one), so what a process
 * leaves behind when it dies (the jobs it was running, and their credit holds) is ended only once
 * its lease has lapsed: never the jobs or holds of a coordinator that is still running them.
 */
import { randomUUID } from "node:crypto";
import type { Db } from "./db/database.js";

/** How often a coordinator renews its lease; one that missed LEASE_MISSES renewals is gone. */
export const LEASE_RENEW_MS = 5_000;
const LEASE_MISSES = 3;

/** A lease last renewed before this has lapsed. */
const lapsedBefore = (now: number) => new Date(now - LEASE_RENEW_MS * LEASE_MISSES);

export class InstanceLease {
  readonly id = randomUUID();

  private constructor(
    private readonly db: Db,
    /** the database is this process's alone */
    readonly exclusive: boolean,
  ) {}

  /**
   * Takes a lease. `exclusive`: the database is this process's alone (embedded PGlite opens in one
   * process only), so every other lease in it belongs to a process that has gone.
   */
  static async take(db: Db, exclusive: boolean): Promise<InstanceLease> {
    const lease = new InstanceLease(db, exclusive);
    const now = new Date();
    await db.insertInto("coordinator_instances").values({ id: lease.id, started_at: now, seen_at: now }).execute();
    return lease;
  }

  /** Renews the lease; one taken away while this process stalled (its holds were released) is taken again. */
  async renew(): Promise<void> {
    const now = new Date();
    await this.db
      .insertInto("coordinator_instances")
      .values({ id: this.id, started_at: now, seen_at: now })
      .onConflict((c) => c.column("id").doUpdateSet({ seen_at: now }))
      .execute();
  }

  /** Gives the lease up at a clean stop (every job of this process has ended). */
  async end(): Promise<void> {
    await this.db.deleteFrom("coordinator_instances").where("id", "=", this.id).execute();
  }

  /** Other coordinators whose leases have lapsed (on an exclusive database: every other one). */
  async lapsed(now = Date.now()): Promise<string[]> {
    let q = this.db.selectFrom("coordinator_instances").select("id").where("id", "!=", this.id);
    if (!this.exclusive) q = q.where("seen_at", "<=", lapsedBefore(now));
    return (await q.execute()).map((r) => r.id);
  }

  /** Drops the leases of coordinators whose holds have been released. */
  async forget(ids: readonly string[]): Promise<void> {
    if (ids.length) await this.db.deleteFrom("coordinator_instances").where("id", "in", ids).execute();
  }

  /** The coordinators whose leases are current, this one included. */
  async live(now = Date.now()): Promise<string[]> {
    if (this.exclusive) return [this.id];
    const rows = await this.db.selectFrom("coordinator_instances").select("id").where("seen_at", ">", lapsedBefore(now)).execute();
    return rows.map((r) => r.id);
  }
}
