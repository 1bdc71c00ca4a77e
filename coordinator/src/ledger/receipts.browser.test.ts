/** Receipts of browser nodes: signed by the session key, credited to the wallet that delegated to it. */
import { type ReceiptRequest, receiptFromWire, workReceiptTypedData } from "@sharedllm/protocol";
import { type TestDatabase, testDatabase } from "@sharedllm/testkit";
import type { Address, Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Db, openDatabase } from "../db/database.js";
import { Receipts } from "./receipts.js";

const CHAIN = 31337;
const LEDGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3" as Address;
const COORDINATOR = privateKeyToAccount(generatePrivateKey()).address;
let database: TestDatabase;
let db: Db;
let receipts: Receipts;
const sent: ReceiptRequest[] = [];

beforeAll(async () => {
  database = await testDatabase();
  db = await openDatabase(database);
  receipts = new Receipts(db, CHAIN, LEDGER, COORDINATOR, (_node, frame) => {
    sent.push(frame);
    return true;
  });
});
afterAll(async () => {
  await db?.destroy();
  await database?.cleanup();
});

async function proposal(node: Address, jobId: string): Promise<ReceiptRequest> {
  await db
    .insertInto("api_keys")
    .values({ id: `k-${jobId}`, key_hash: `h-${jobId}`, name: "t" })
    .execute();
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

const earned = async (address: string) =>
  (
    await db.selectFrom("ledger_entries").select("amount").where("address", "=", address.toLowerCase()).where("kind", "=", "earn").execute()
  ).reduce((s, r) => s + BigInt(r.amount), 0n);

describe("a browser node's receipts", () => {
  it("are signed by its session key and credit the wallet that delegated to it, not the key", async () => {
    const wallet = privateKeyToAccount(generatePrivateKey());
    const session = privateKeyToAccount(generatePrivateKey());
    await db
      .insertInto("browser_delegations")
      .values({
        session_key: session.address.toLowerCase(),
        wallet: wallet.address.toLowerCase(),
        coordinator: "x",
        chain_id: CHAIN,
        expires_at: new Date(Date.now() + 3600_000),
        signature: "0x",
      })
      .execute();
    const req = await proposal(session.address, "job-browser-1");
    const typed = workReceiptTypedData(receiptFromWire(req.receipt), req.domain);
    // another key (even the wallet's own) cannot sign for the session key
    const forged = await wallet.signTypedData(typed as Parameters<typeof wallet.signTypedData>[0]);
    const refused = await receipts.submit(session.address, req.receipt, forged as Hex);
    expect(refused).toEqual({ accepted: false, reason: expect.stringContaining("not by the node") });
    expect(await earned(wallet.address)).toBe(0n);
    const signature = await session.signTypedData(typed as Parameters<typeof session.signTypedData>[0]);
    expect(await receipts.submit(session.address, req.receipt, signature as Hex)).toEqual({ accepted: true });
    expect(await earned(wallet.address)).toBe(1500n);
    expect(await earned(session.address)).toBe(0n);
    // sent again: paid once
    expect((await receipts.submit(session.address, req.receipt, signature as Hex)).accepted).toBe(false);
    expect(await earned(wallet.address)).toBe(1500n);
  });
});
