/**
 * A real local EVM chain for tests (the dev chain `sharedllm up` runs: Hardhat's JSON-RPC node)
 * with the real contracts deployed, and wallets from its well-known test mnemonic.
 */

import { chainClients, DEV_WEI_PER_CREDIT, deployDevContracts, signInWithEthereum, startDevChain } from "@sharedllm/cli";
import { CreditLedger, DEV_DEPLOYER_KEY, FederationRegistry, ROLES } from "@sharedllm/contracts";
import { freePort } from "@sharedllm/node";
import { type Address, createTestClient, type Hex, http, type LocalAccount, parseEther } from "viem";
import { generatePrivateKey, mnemonicToAccount, privateKeyToAccount } from "viem/accounts";
import { tempPaths } from "./helpers.ts";

const TEST_MNEMONIC = "test test test test test test test test test test test junk";

/** One of the dev chain's funded test wallets (index 0 deploys the contracts). */
export const devWallet = (index: number) => mnemonicToAccount(TEST_MNEMONIC, { addressIndex: index });

export async function startTestChain() {
  const paths = await tempPaths("sharedllm-chain-");
  const { rpcUrl, supervisor } = await startDevChain({ home: paths.home, host: "127.0.0.1", port: await freePort() });
  const coordinator = privateKeyToAccount(generatePrivateKey());
  const deployment = await deployDevContracts(rpcUrl, coordinator.address, []);
  const ledger = deployment.contracts.CreditLedger;
  const { publicClient } = chainClients(rpcUrl, deployment.chainId);
  const test = createTestClient({ mode: "hardhat", transport: http(rpcUrl) });
  const read = <T>(functionName: string, args: readonly unknown[]) =>
    publicClient.readContract({ address: ledger, abi: CreditLedger.abi, functionName, args } as never) as Promise<T>;
  return {
    rpcUrl,
    chainId: deployment.chainId,
    ledger,
    /** the governance timelock */
    governance: deployment.contracts.Governance,
    /** FederationRegistry (governed by the dev deployer, DEV_DEPLOYER_KEY) */
    registry: deployment.contracts.FederationRegistry,
    coordinator,
    publicClient,
    /** the coordinator's ledger options for this chain */
    ledgerOptions: (settlement = { maxAgeMs: 300, checkEveryMs: 100 }) => ({ chain: { rpcUrl, ledger, account: coordinator }, settlement }),
    fund: (address: Address) => test.setBalance({ address, value: parseEther("100") }),
    /** grants another coordinator account its role (and gas) */
    async addCoordinator(address: Address) {
      const { wallet } = chainClients(rpcUrl, deployment.chainId, privateKeyToAccount(DEV_DEPLOYER_KEY));
      const hash = await (wallet as NonNullable<typeof wallet>).writeContract({
        address: ledger,
        abi: CreditLedger.abi,
        functionName: "grantRole",
        args: [ROLES.coordinator, address],
      });
      await publicClient.waitForTransactionReceipt({ hash });
      await test.setBalance({ address, value: parseEther("100") });
    },
    test,
    /** sends a transaction to the ledger or the registry from `account`; throws unless it is mined and succeeds */
    async send(account: LocalAccount, contract: "ledger" | "registry", functionName: string, args: readonly unknown[], value?: bigint) {
      const { wallet } = chainClients(rpcUrl, deployment.chainId, account);
      const [address, abi] =
        contract === "ledger" ? [ledger, CreditLedger.abi] : [deployment.contracts.FederationRegistry, FederationRegistry.abi];
      const hash = await (wallet as NonNullable<typeof wallet>).writeContract({ address, abi, functionName, args, value } as never);
      const receipt = await publicClient.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`${functionName} reverted (${hash})`);
      return receipt;
    },
    /** buys `credits` with the native coin straight into escrow for `forCoordinator` */
    async deposit(account: LocalAccount, credits: bigint, forCoordinator: Address = coordinator.address) {
      const { wallet } = chainClients(rpcUrl, deployment.chainId, account);
      const hash = await (wallet as NonNullable<typeof wallet>).writeContract({
        address: ledger,
        abi: CreditLedger.abi,
        functionName: "buy",
        args: [forCoordinator],
        value: credits * DEV_WEI_PER_CREDIT,
      });
      await publicClient.waitForTransactionReceipt({ hash });
    },
    escrow: async (user: Address, of: Address = coordinator.address) => {
      const [deposited, spent, pendingWithdrawal] = await read<readonly [bigint, bigint, bigint, bigint]>("escrows", [user, of]);
      return { deposited, spent, pendingWithdrawal };
    },
    credits: (account: Address) => read<bigint>("credits", [account]),
    /** what `origin` accepted owing the peer coordinator `server` (federation clearing) */
    accepted: (origin: Address, server: Address) => read<bigint>("accepted", [origin, server]),
    settlement: async (of: Address = coordinator.address) => {
      const [lastBatch, earningsRoot, totalSpent, totalEarnings, totalClaimed] = await read<readonly [bigint, Hex, bigint, bigint, bigint]>(
        "settlements",
        [of],
      );
      return { lastBatch, earningsRoot, totalSpent, totalEarnings, totalClaimed };
    },
    batchEvents: (of: Address = coordinator.address) =>
      publicClient.getContractEvents({
        address: ledger,
        abi: CreditLedger.abi,
        eventName: "BatchSettled",
        args: { coordinator: of },
        fromBlock: 0n,
      }),
    async stop() {
      await supervisor.stop();
      await paths.cleanup();
    },
  };
}

export type TestChain = Awaited<ReturnType<typeof startTestChain>>;

/** Signs in with Ethereum at a coordinator; returns the session token. */
export const signIn = signInWithEthereum;

/** Creates a wallet-bound API key with a session token. */
export async function createKey(coordinatorUrl: string, session: string, name = "test"): Promise<string> {
  const res = await fetch(`${coordinatorUrl}/v1/keys`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${session}` },
    body: JSON.stringify({ name }),
  });
  if (res.status !== 201) throw new Error(`creating a key failed: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { key: string }).key;
}
