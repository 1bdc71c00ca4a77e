import { receiptJobId } from "@sharedllm/protocol";
import { Kysely } from "kysely";
import { KyselyPGlite } from "kysely-pglite";
import { describe, expect, it } from "vitest";
import { migrate } from "./migrations.js";
import type { Database } from "./schema.js";

describe("migration 0006_settlement_entries", () => {
  it("records which batch took each entry of batches made under the id watermark, with the job key receipts use", async () => {
    const { dialect } = await KyselyPGlite.create();
    const db = new Kysely<Database>({ dialect });
    try {
      await migrate(db as Kysely<unknown>, "0005_ledger");
      const entry = (kind: "charge" | "earn", job: string) => ({
        address: "0x00000000000000000000000000000000000000a1",
        kind,
        amount: 7n,
        job_id: kind === "earn" ? receiptJobId(job) : job,
      });
      await db
        .insertInto("ledger_entries")
        .values([entry("charge", "j1"), entry("earn", "j1"), entry("charge", "j2"), entry("earn", "j2"), entry("charge", "j3")])
        .execute();
      await db
        .insertInto("settlements")
        .values([
          { batch_id: 1, status: "confirmed", max_entry_id: "2", payload: "{}" },
          { batch_id: 2, status: "confirmed", max_entry_id: "4", payload: "{}" },
        ])
        .execute();
      await migrate(db as Kysely<unknown>);
      const rows = await db.selectFrom("batch_entries").selectAll().orderBy("entry_id").execute();
      expect(rows.map((r) => [String(r.entry_id), r.batch_id, r.job_key])).toEqual([
        ["1", 1, receiptJobId("j1")],
        ["2", 1, receiptJobId("j1")],
        ["3", 2, receiptJobId("j2")],
        ["4", 2, receiptJobId("j2")],
      ]);
    } finally {
      await db.destroy();
    }
  });
});

describe("migration 0012_credit_accounts", () => {
  it("starts each payer's running totals from the journal: its charges, and its holds not released", async () => {
    const { dialect } = await KyselyPGlite.create();
    const db = new Kysely<Database>({ dialect });
    try {
      await migrate(db as Kysely<unknown>, "0011_federation_receipts");
      const a = "0x00000000000000000000000000000000000000a1";
      const b = "0x00000000000000000000000000000000000000b2";
      const entry = (address: string, kind: "charge" | "hold" | "release" | "earn", amount: bigint, job: string) => ({
        address,
        kind,
        amount,
        job_id: job,
      });
      await db
        .insertInto("ledger_entries")
        .values([
          entry(a, "hold", 100n, "j1"),
          entry(a, "release", 100n, "j1"),
          entry(a, "charge", 40n, "j1"),
          entry(a, "hold", 50n, "j2"),
          entry(b, "earn", 9n, "j1"),
        ])
        .execute();
      await migrate(db as Kysely<unknown>);
      const rows = await db.selectFrom("credit_accounts").selectAll().orderBy("address").execute();
      expect(rows.map((r) => [r.address, String(r.charged), String(r.held)])).toEqual([[a, "40", "50"]]);
    } finally {
      await db.destroy();
    }
  });
});
