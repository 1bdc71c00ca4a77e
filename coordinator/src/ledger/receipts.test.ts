/** Work receipts against a hostile node: what one node sends about another's receipt changes nothing for it. */
import { type ReceiptRequest, receiptFromWire, workReceiptTypedData } from "@sharedllm/protocol";
import { type TestDatabase, testDatabase } from "@sharedllm/testkit";
import type { Address, Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Db, openDatabase } from "../db/database.js";
import { MAX_REJECTIONS_KEPT_PER_HOUR, Receipts } from "./receipts.js";

const CHAIN = 31337;
const LEDGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3" as Address;
const COORDINATOR = privateKeyToAccount(generatePrivateKey()).address;
let database: TestDatabase;
let db: Db;
let receipts: Receipts;

beforeAll(async () => {
  database = await testDatabase();
  db = await openDatabase(database);
  receipts = new Receipts(db, CHAIN, LEDGER, COORDINATOR, () => true);
});
afterAll(async () => {
  await db?.destroy();
  await database?.cleanup();
});

async function proposal(node: Address, jobId: string): Promise<ReceiptRequest> {
  const [r] = await db.transaction().execute((tx) =>
    receipts.propose(tx, {
      jobId,
      modelSha256: "ab".repeat(32),
      promptTokens: 10,
      completionTokens: 5,
      credits: 1500n,
      members: [{ node, shareBps: 10_000 }],
    }),
  );
  return r as ReceiptRequest;
}

const pending = async (node: Address) =>
  (await db.selectFrom("receipt_proposals").select("job_id").where("node_address", "=", node.toLowerCase()).execute()).length;

describe("receipts from a hostile node", () => {
  it("cannot refuse or sign another node's receipt; that node is still paid", async () => {
    const honest = privateKeyToAccount(generatePrivateKey());
    const hostile = privateKeyToAccount(generatePrivateKey());
    const req = await proposal(honest.address, "job-hostile-1");
    // a refusal in the honest node's name would withdraw its proposal: ignored, and nothing is stored
    const refusal = await receipts.submit(hostile.address, req.receipt, null, "not mine to sign");
    expect(refusal).toEqual({ accepted: false, reason: expect.stringContaining("is ignored") });
    expect(await pending(honest.address)).toBe(1);
    const typed = workReceiptTypedData(receiptFromWire(req.receipt), req.domain) as Parameters<typeof hostile.signTypedData>[0];
    const forged = await hostile.signTypedData(typed);
    expect((await receipts.submit(hostile.address, req.receipt, forged as Hex)).accepted).toBe(false);
    expect(await pending(honest.address)).toBe(1);
    expect(await receipts.submit(honest.address, req.receipt, (await honest.signTypedData(typed)) as Hex)).toEqual({ accepted: true });
    const earned = await db.selectFrom("ledger_entries").select("amount").where("address", "=", honest.address.toLowerCase()).execute();
    expect(earned.map((r) => BigInt(r.amount))).toEqual([1500n]);
  });

  it("fill no table: at most MAX_REJECTIONS_KEPT_PER_HOUR of its rejected receipts are kept", async () => {
    const spammer = privateKeyToAccount(generatePrivateKey());
    const honest = privateKeyToAccount(generatePrivateKey());
    const req = await proposal(honest.address, "job-hostile-2");
    const junk = { ...req.receipt, node: spammer.address };
    for (let i = 0; i < MAX_REJECTIONS_KEPT_PER_HOUR + 50; i++) {
      const outcome = await receipts.submit(spammer.address, { ...junk, jobId: `0x${i.toString(16).padStart(64, "0")}` }, "0x00" as Hex);
      expect(outcome.accepted).toBe(false);
    }
    const kept = await db.selectFrom("receipts").select("id").where("node_address", "=", spammer.address.toLowerCase()).execute();
    expect(kept).toHaveLength(MAX_REJECTIONS_KEPT_PER_HOUR);
    // another node's rejections are still recorded, and its receipts paid
    const typed = workReceiptTypedData(receiptFromWire(req.receipt), req.domain) as Parameters<typeof honest.signTypedData>[0];
    expect(await receipts.submit(honest.address, req.receipt, (await honest.signTypedData(typed)) as Hex)).toEqual({ accepted: true });
  });
});
