import { describe, expect, it } from "vitest";
import { openDatabase } from "../db/database.js";
import { FederationNonces, FederationTransactions } from "./store.js";

describe("federation storage", () => {
  it("accepts a peer's nonce once until it is purged after its expiry; a transaction id runs once", async () => {
    const db = await openDatabase({ dataDir: "memory://" });
    try {
      const nonces = new FederationNonces(db);
      const soon = new Date(Date.now() + 60_000);
      expect(await nonces.remember("0xA1", "n-0123456789abcdef", soon)).toBe(true);
      expect(await nonces.remember("0xa1", "n-0123456789abcdef", soon)).toBe(false);
      // another peer's nonce is its own
      expect(await nonces.remember("0xb2", "n-0123456789abcdef", soon)).toBe(true);
      await nonces.purge();
      expect(await nonces.remember("0xa1", "n-0123456789abcdef", soon)).toBe(false);
      // by the database's clock, with a minute's margin: just expired is kept, long expired goes
      const ago = (s: number) => new Date(Date.now() - s * 1000);
      expect(await nonces.remember("0xa1", "n-recent-0123456789", ago(30))).toBe(true);
      expect(await nonces.remember("0xa1", "n-old-0123456789abc", ago(120))).toBe(true);
      await nonces.purge();
      expect(await nonces.remember("0xa1", "n-recent-0123456789", soon)).toBe(false);
      expect(await nonces.remember("0xa1", "n-old-0123456789abc", soon)).toBe(true);

      const txs = new FederationTransactions(db);
      expect(await txs.begin("0xa1", "tx-1")).toEqual({ first: true });
      expect(await txs.begin("0xa1", "tx-1")).toEqual({ first: false, result: null });
      await txs.finish("0xa1", "tx-1", '{"id":"first"}');
      await txs.finish("0xa1", "tx-1", '{"id":"second"}');
      expect(await txs.begin("0xA1", "tx-1")).toEqual({ first: false, result: '{"id":"first"}' });
      expect(await txs.begin("0xb2", "tx-1")).toEqual({ first: true });
      // kept an hour, with its output, then forgotten
      await db
        .updateTable("federation_transactions")
        .set({ created_at: new Date(Date.now() - 2 * 3600_000) })
        .where("peer", "=", "0xa1")
        .execute();
      await txs.purge();
      expect(await txs.begin("0xb2", "tx-1")).toEqual({ first: false, result: null });
      expect(await txs.begin("0xa1", "tx-1")).toEqual({ first: true });
    } finally {
      await db.destroy();
    }
  });
});
