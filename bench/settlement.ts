/**
 * Gas per settlement on the dev chain (Hardhat's JSON-RPC node) with the real CreditLedger and the
 * coordinator's own Settler: N receipts are written to a fresh journal (one charge and one node
 * earning each), the Settler prepares and posts batches, and the gas of its transactions is summed.
 * A batch is one `settle` transaction whatever the number of receipts; what costs gas is the number
 * of distinct users whose cumulative spend moves (a storage write each), so receipts from a few
 * users cost almost nothing each, and a batch posts at most 400 users (a transaction's gas cap).
 */
import { randomUUID } from "node:crypto";
import { chainClients, deployDevContracts, startDevChain } from "@sharedllm/cli";
import { CreditLedger, DEV_DEPLOYER_KEY, ROLES } from "@sharedllm/contracts";
import { LedgerChain, openDatabase, Settler } from "@sharedllm/coordinator";
import { receiptJobId } from "@sharedllm/protocol";
import { freePort, tempPaths } from "@sharedllm/testkit";
import { pino } from "pino";
import { type Address, createTestClient, createWalletClient, http, parseEther } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";

export interface SettlementGas {
  shape: string;
  receipts: number;
  users: number;
  transactions: number;
  gas: bigint;
  perReceipt: number;
}

const CREDITS_PER_RECEIPT = 10n;
const NODES = Array.from({ length: 5 }, (_, i) => `0x${(0xa000 + i).toString(16).padStart(40, "0")}` as Address);

export async function benchSettlement(sizes = [1, 100, 1000]): Promise<SettlementGas[]> {
  const paths = await tempPaths("sharedllm-bench-chain-");
  const dev = await startDevChain({ home: paths.home, host: "127.0.0.1", port: await freePort() });
  const db = await openDatabase({ dataDir: "memory://" });
  try {
    const deployment = await deployDevContracts(dev.rpcUrl, privateKeyToAccount(generatePrivateKey()).address, []);
    const ledger = deployment.contracts.CreditLedger;
    const transport = http(dev.rpcUrl);
    const test = createTestClient({ mode: "hardhat", transport });
    const {
      publicClient,
      wallet: deployer,
      chain: evm,
    } = chainClients(dev.rpcUrl, deployment.chainId, privateKeyToAccount(DEV_DEPLOYER_KEY));
    const users = Array.from({ length: Math.max(...sizes) }, (_, i) => `0x${(0xb0000 + i).toString(16).padStart(40, "0")}` as Address);
    const rows: SettlementGas[] = [];
    for (const [shape, userCount] of [
      ["10 users", (n: number) => Math.min(10, n)],
      ["a user per receipt", (n: number) => n],
    ] as const) {
      for (const receipts of sizes) {
        // a fresh coordinator (role, gas) and journal for each case
        const account = privateKeyToAccount(generatePrivateKey());
        await publicClient.waitForTransactionReceipt({
          hash: await (deployer as NonNullable<typeof deployer>).writeContract({
            address: ledger,
            abi: CreditLedger.abi,
            functionName: "grantRole",
            args: [ROLES.coordinator, account.address],
          }),
        });
        await test.setBalance({ address: account.address, value: parseEther("100") });
        const payers = users.slice(0, userCount(receipts));
        for (const user of payers) {
          await test.setBalance({ address: user, value: parseEther("1") });
          await test.impersonateAccount({ address: user });
          const w = createWalletClient({ transport, account: user, chain: evm });
          await publicClient.waitForTransactionReceipt({
            hash: await w.writeContract({
              address: ledger,
              abi: CreditLedger.abi,
              functionName: "buy",
              args: [account.address],
              value: parseEther("0.001"),
            }),
          });
        }
        await db.deleteFrom("ledger_entries").execute();
        await db.deleteFrom("settlements").execute();
        await db.deleteFrom("batch_entries").execute();
        await db.deleteFrom("set_aside_entries").execute();
        for (let i = 0; i < receipts; i++) {
          const job = randomUUID();
          await db
            .insertInto("ledger_entries")
            .values([
              { address: (payers[i % payers.length] as Address).toLowerCase(), kind: "charge", amount: CREDITS_PER_RECEIPT, job_id: job },
              // an accepted receipt names the job by its hash, as receipts.ts writes it
              {
                address: (NODES[i % NODES.length] as Address).toLowerCase(),
                kind: "earn",
                amount: CREDITS_PER_RECEIPT,
                job_id: receiptJobId(job),
              },
            ])
            .execute();
        }
        const chain = await LedgerChain.connect({ rpcUrl: dev.rpcUrl, ledger, account });
        const settler = new Settler(db, chain, pino({ level: "silent" }), { maxAgeMs: 0 });
        const newest = async () =>
          (await db.selectFrom("settlements").select(["max_entry_id", "status"]).orderBy("batch_id", "desc").executeTakeFirst()) ??
          undefined;
        const { max } = await db
          .selectFrom("ledger_entries")
          .select((eb) => eb.fn.max("id").as("max"))
          .executeTakeFirstOrThrow();
        for (let i = 0; i < 20; i++) {
          await settler.tick(true);
          const last = await newest();
          if (last?.status === "confirmed" && BigInt(last.max_entry_id) >= BigInt(max as string)) break;
        }
        const batches = await db.selectFrom("settlements").select(["tx_hash", "status"]).execute();
        if (batches.some((b) => b.status !== "confirmed" || !b.tx_hash)) throw new Error(`settling ${receipts} receipts did not finish`);
        let gas = 0n;
        for (const b of batches) gas += (await publicClient.getTransactionReceipt({ hash: b.tx_hash as `0x${string}` })).gasUsed;
        const aside = await db.selectFrom("set_aside_entries").select("reason").limit(1).executeTakeFirst();
        if (aside) throw new Error(`the settler set a bench entry aside: ${aside.reason}`);
        const spent = (await chain.escrow(payers[0] as Address)).spent;
        if (spent === 0n) throw new Error("the settlement did not record the spend");
        rows.push({ shape, receipts, users: payers.length, transactions: batches.length, gas, perReceipt: Number(gas) / receipts });
      }
    }
    return rows;
  } finally {
    await db.destroy();
    await dev.supervisor.stop();
    await paths.cleanup();
  }
}
