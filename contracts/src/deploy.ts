import { fileURLToPath } from "node:url";
import type { Account, Address, Chain, Hex, PublicClient, Transport, WalletClient } from "viem";
import { keccak256, stringToBytes } from "viem";
import { CreditLedger, FederationRegistry, MockStablecoin, TimelockController } from "./artifacts.js";

export const ROLES = {
  governor: keccak256(stringToBytes("GOVERNOR_ROLE")),
  pauser: keccak256(stringToBytes("PAUSER_ROLE")),
  treasurer: keccak256(stringToBytes("TREASURER_ROLE")),
  coordinator: keccak256(stringToBytes("COORDINATOR_ROLE")),
  registrar: keccak256(stringToBytes("REGISTRAR_ROLE")),
} as const;

/** Timelock delay of dev deployments: long enough to be a real delay, short enough for a test to wait it out. */
export const DEV_TIMELOCK_DELAY_S = 2n;

/** Where deployments to real networks are recorded, one `<chainId>.json` each. */
export const DEPLOYMENTS_DIR = fileURLToPath(new URL("../deployments", import.meta.url));

export interface Deployment {
  chainId: number;
  contracts: { CreditLedger: Address; FederationRegistry: Address; Governance: Address; MockStablecoin?: Address };
  /** the operator: pauses, grants and revokes coordinators, proposes governance changes */
  deployer: Address;
  deployedAt: string;
  /** the block of the first contract's deployment: indexers read events from there */
  startBlock?: number;
}

export interface DeployOptions {
  publicClient: PublicClient;
  wallet: WalletClient<Transport, Chain | undefined, Account>;
  /** wei per credit (the smallest credit unit) */
  weiPerCredit: bigint;
  withdrawalNoticeSeconds: bigint;
  /** most credits of user spend one settlement may move */
  maxBatchSpend: bigint;
  /** how long every governance change (price, cap, notice, sweep, roles) waits in the timelock */
  timelockDelaySeconds: bigint;
  /** addresses granted COORDINATOR_ROLE */
  coordinators?: Address[];
  /** deploy a mock stablecoin and price credits in it (dev chains and tests) */
  mockStablecoin?: { unitsPerCredit: bigint };
}

async function deploy(o: DeployOptions, abi: readonly unknown[], bytecode: Hex, args: readonly unknown[]): Promise<Address> {
  const hash = await o.wallet.deployContract({ abi, bytecode, args, chain: o.wallet.chain, account: o.wallet.account });
  const receipt = await o.publicClient.waitForTransactionReceipt({ hash });
  if (!receipt.contractAddress || receipt.status !== "success") throw new Error(`deployment failed (${hash})`);
  return receipt.contractAddress;
}

async function send(o: DeployOptions, address: Address, abi: readonly unknown[], functionName: string, args: readonly unknown[]) {
  const hash = await o.wallet.writeContract({ address, abi, functionName, args, chain: o.wallet.chain, account: o.wallet.account });
  const receipt = await o.publicClient.waitForTransactionReceipt({ hash });
  if (receipt.status !== "success") throw new Error(`${functionName} failed (${hash})`);
}

/**
 * Deploys the governance timelock (OpenZeppelin TimelockController: the deployer proposes, cancels
 * and executes; nobody administers it but itself), CreditLedger governed by it with the deployer as
 * operator (pauser, registrar of coordinators), FederationRegistry and, when asked, a mock stablecoin.
 */
export async function deployContracts(o: DeployOptions): Promise<Deployment> {
  const operator = o.wallet.account.address;
  const startBlock = Number(await o.publicClient.getBlockNumber({ cacheTime: 0 })) + 1;
  const zero = "0x0000000000000000000000000000000000000000";
  const governance = await deploy(o, TimelockController.abi, TimelockController.bytecode, [
    o.timelockDelaySeconds,
    [operator],
    [operator],
    zero,
  ]);
  const stablecoin = o.mockStablecoin ? await deploy(o, MockStablecoin.abi, MockStablecoin.bytecode, []) : undefined;
  const ledger = await deploy(o, CreditLedger.abi, CreditLedger.bytecode, [
    governance,
    operator,
    {
      weiPerCredit: o.weiPerCredit,
      withdrawalNotice: o.withdrawalNoticeSeconds,
      maxBatchSpend: o.maxBatchSpend,
      stablecoin: stablecoin ?? zero,
      stableUnitsPerCredit: o.mockStablecoin?.unitsPerCredit ?? 0n,
    },
  ]);
  const registry = await deploy(o, FederationRegistry.abi, FederationRegistry.bytecode, [operator]);
  const contracts: Deployment["contracts"] = { CreditLedger: ledger, FederationRegistry: registry, Governance: governance };
  if (stablecoin) contracts.MockStablecoin = stablecoin;
  for (const c of o.coordinators ?? []) await send(o, ledger, CreditLedger.abi, "grantRole", [ROLES.coordinator, c]);
  return { chainId: await o.publicClient.getChainId(), contracts, deployer: operator, deployedAt: new Date().toISOString(), startBlock };
}
