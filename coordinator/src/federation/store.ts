/**
 * What federation keeps in the database: the nonces of peers' signed calls (each accepted once
 * while its signature could be fresh, across restarts and replicas), and peers' transaction ids
 * with the first result given for each, so a repeated one does not run twice.
 */
import type { Db } from "../db/database.js";

export class FederationNonces {
  constructor(private readonly db: Db) {}

  /** false when this peer already used the nonce */
  async remember(peer: string, nonce: string, expiresAt: Date): Promise<boolean> {
    const fresh = await this.db
      .insertInto("federation_nonces")
      .values({ peer: peer.toLowerCase(), nonce, expires_at: expiresAt })
      .onConflict((c) => c.columns(["peer", "nonce"]).doNothing())
      .returning("nonce")
      .executeTakeFirst();
    return Boolean(fresh);
  }

  /** Forgets nonces whose signatures can no longer be fresh. */
  async purge(now = new Date()): Promise<void> {
    await this.db.deleteFrom("federation_nonces").where("expires_at", "<", now).execute();
  }
}

export type TransactionStart = { first: true } | { first: false; result: string | null };

export class FederationTransactions {
  constructor(private readonly db: Db) {}

  /** Claims (peer, txid): the first caller runs it; later ones get its result (null while it runs). */
  async begin(peer: string, txid: string): Promise<TransactionStart> {
    const claimed = await this.db
      .insertInto("federation_transactions")
      .values({ peer: peer.toLowerCase(), txid })
      .onConflict((c) => c.columns(["peer", "txid"]).doNothing())
      .returning("txid")
      .executeTakeFirst();
    if (claimed) return { first: true };
    const row = await this.db
      .selectFrom("federation_transactions")
      .select("result")
      .where("peer", "=", peer.toLowerCase())
      .where("txid", "=", txid)
      .executeTakeFirstOrThrow();
    return { first: false, result: row.result };
  }

  /** Records the first result of (peer, txid); it is what a repeat gets. */
  async finish(peer: string, txid: string, result: string): Promise<void> {
    await this.db
      .updateTable("federation_transactions")
      .set({ result, finished_at: new Date() })
      .where("peer", "=", peer.toLowerCase())
      .where("txid", "=", txid)
      .where("result", "is", null)
      .execute();
  }
}
