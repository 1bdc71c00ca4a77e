/**
 * The history indexer on the dev chain with the real contracts: what it keeps equals the logs the
 * chain gives (read here with viem on their own), across a restart and a reorganisation.
 */
import { CreditLedger, DEV_DEPLOYER_KEY, FederationRegistry } from "@sharedllm/contracts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "@sharedllm/testkit";
import { devWallet, startTestChain, type TestChain } from "@sharedllm/testkit/chain";
import type { Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Db, openDatabase } from "../db/database.js";
import { HISTORY_TABLES } from "./entities.js";
import { History, parseCursor } from "./history.js";
import { Indexer } from "./indexer.js";

let chain: TestChain;
let database: TestDatabase;
let db: Db;
let indexer: Indexer | undefined;

beforeAll(async () => {
  chain = await startTestChain();
  database = await testDatabase();
  db = await openDatabase(database);
}, 120_000);

afterAll(async () => {
  await indexer?.stop();
  await db?.destroy();
  await database?.cleanup();
  await chain?.stop();
});

const start = () => {
  indexer = new Indexer(db, quietLogger(), { rpcUrl: chain.rpcUrl, ledger: chain.ledger, registry: chain.registry, pollMs: 50 });
  indexer.start();
  return indexer;
};

/** Every event of both contracts as the chain gives it: `table tx:logIndex`, with the indexer's table names. */
async function onChain(): Promise<string[]> {
  const table: Record<string, string> = {
    CreditsBought: "credit_purchases",
    Deposited: "deposits",
    Registered: "site_registrations",
    Admitted: "admissions",
    Endorsed: "endorsement_changes",
    RoleGranted: "role_changes",
    RoleRevoked: "role_changes",
  };
  const logs = [
    ...(await chain.publicClient.getContractEvents({ address: chain.ledger, abi: CreditLedger.abi, fromBlock: 0n })),
    ...(await chain.publicClient.getContractEvents({ address: chain.registry, abi: FederationRegistry.abi, fromBlock: 0n })),
  ];
  return logs.map((l) => `${table[l.eventName] ?? "governance_events"} ${l.transactionHash}:${l.logIndex}`).sort();
}

async function indexed(): Promise<string[]> {
  const out: string[] = [];
  for (const t of HISTORY_TABLES.filter((t) => t !== "settlement_batch_users")) {
    for (const r of await db.selectFrom(t).select(["tx_hash", "log_index"]).execute()) out.push(`${t} ${r.tx_hash}:${r.log_index}`);
  }
  return out.sort();
}

/** Waits until the indexer has read up to the chain's head and what it keeps equals the chain's logs. */
async function caughtUp(what: string) {
  const head = await chain.publicClient.getBlockNumber({ cacheTime: 0 });
  await waitFor(what, async () => ((await indexer?.status())?.block?.number ?? -1n) >= head || undefined, 20_000);
  expect(await indexed()).toEqual(await onChain());
}

describe("the history indexer on the dev chain", () => {
  it("keeps what the chain says, resumes from its cursor after a restart, and follows a reorganisation", async () => {
    const user = devWallet(3);
    const site = privateKeyToAccount(generatePrivateKey());
    await chain.fund(site.address);
    const history = new History(db);
    const buy = await chain.send(user, "ledger", "buy", [chain.coordinator.address], 5_000n * 1_000_000_000n);
    start();
    await caughtUp("the first deposit indexed");
    const deposits = await history.escrow(user.address.toLowerCase(), undefined, 10);
    expect(deposits.data).toEqual([
      expect.objectContaining({
        kind: "deposit",
        amount: "5000",
        transactionHash: buy.transactionHash,
        blockNumber: String(buy.blockNumber),
      }),
    ]);
    const time = (await chain.publicClient.getBlock({ blockNumber: buy.blockNumber })).timestamp;
    expect(deposits.data[0]?.timestamp).toBe(Number(time));

    // a restart: the next indexer resumes from the cursor in the database, nothing read twice
    await indexer?.stop();
    const cursor = await db.selectFrom("indexer_cursor").selectAll().executeTakeFirstOrThrow();
    const pubKey = `0x${site.publicKey.slice(4)}` as Hex;
    const validUntil = BigInt(Math.floor(Date.now() / 1000) + 86_400);
    await chain.send(site, "registry", "register", [pubKey, 1, validUntil, "https://site.example", "{}"]);
    await chain.send(privateKeyToAccount(DEV_DEPLOYER_KEY), "registry", "admit", [site.address]);
    start();
    await caughtUp("the registration after the restart");
    const fed = await history.federation(site.address.toLowerCase(), undefined, 10);
    expect(fed.data.map((i) => i.kind)).toEqual(["admitted", "registered"]);
    expect(fed.data[1]).toMatchObject({ url: "https://site.example", keyId: "1", validUntil: validUntil.toString() });
    expect(BigInt((await db.selectFrom("indexer_cursor").selectAll().executeTakeFirstOrThrow()).block_number)).toBeGreaterThan(
      BigInt(cursor.block_number),
    );

    // a reorganisation: a deposit is indexed, the chain goes back and mines other transactions
    const snapshot = (await chain.test.request({ method: "evm_snapshot" } as never)) as Hex;
    const lost = await chain.send(user, "ledger", "buy", [chain.coordinator.address], 7n * 1_000_000_000n);
    await caughtUp("the deposit that the reorganisation will remove");
    expect((await history.escrow(user.address.toLowerCase(), undefined, 10)).data.map((i) => i.amount)).toEqual(["7", "5000"]);
    await chain.test.request({ method: "evm_revert", params: [snapshot] } as never);
    const kept = await chain.send(user, "ledger", "buy", [chain.coordinator.address], 11n * 1_000_000_000n);
    await chain.test.request({ method: "evm_mine" } as never);
    expect(kept.blockNumber).toBe(lost.blockNumber);
    await caughtUp("the chain after the reorganisation");
    expect((await history.escrow(user.address.toLowerCase(), undefined, 10)).data.map((i) => i.amount)).toEqual(["11", "5000"]);
    expect(await indexer?.status()).toMatchObject({ reorgs: 1, lastError: undefined });

    // pages: the cursor of one is where the next starts
    const first = await history.escrow(user.address.toLowerCase(), undefined, 1);
    expect(first.data.map((i) => i.amount)).toEqual(["11"]);
    const second = await history.escrow(user.address.toLowerCase(), parseCursor(first.nextCursor ?? undefined), 1);
    expect(second.data.map((i) => i.amount)).toEqual(["5000"]);
    expect(second.nextCursor).toBeNull();
  });
});
