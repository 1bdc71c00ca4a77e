import type { Account, Address, Chain, Hex, PublicClient, Transport, WalletClient } from "viem";
import { keccak256, stringToBytes } from "viem";
import { CreditLedger, FederationRegistry, MockStablecoin } from "./artifacts.js";

export const ROLES = {
  governor: keccak256(stringToBytes("GOVERNOR_ROLE")),
  pauser: keccak256(stringToBytes("PAUSER_ROLE")),
  treasurer: keccak256(stringToBytes("TREASURER_ROLE")),
  coordinator: keccak256(stringToBytes("COORDINATOR_ROLE")),
} as const;

export interface Deployment {
  chainId: number;
  contracts: { CreditLedger: Address; FederationRegistry: Address; MockStablecoin?: Address };
  deployer: Address;
  deployedAt: string;
}

export interface DeployOptions {
  publicClient: PublicClient;
  wallet: WalletClient<Transport, Chain | undefined, Account>;
  /** wei per credit (the smallest credit unit) */
  weiPerCredit: bigint;
  withdrawalNoticeSeconds: bigint;
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

/** Deploys CreditLedger and FederationRegistry (and a mock stablecoin when asked), admin = the deployer. */
export async function deployContracts(o: DeployOptions): Promise<Deployment> {
  const admin = o.wallet.account.address;
  const ledger = await deploy(o, CreditLedger.abi, CreditLedger.bytecode, [admin, o.weiPerCredit, o.withdrawalNoticeSeconds]);
  const registry = await deploy(o, FederationRegistry.abi, FederationRegistry.bytecode, [admin]);
  const contracts: Deployment["contracts"] = { CreditLedger: ledger, FederationRegistry: registry };
  if (o.mockStablecoin) {
    contracts.MockStablecoin = await deploy(o, MockStablecoin.abi, MockStablecoin.bytecode, []);
    await send(o, ledger, CreditLedger.abi, "setStablecoin", [contracts.MockStablecoin, o.mockStablecoin.unitsPerCredit]);
  }
  for (const c of o.coordinators ?? []) await send(o, ledger, CreditLedger.abi, "grantRole", [ROLES.coordinator, c]);
  return { chainId: await o.publicClient.getChainId(), contracts, deployer: admin, deployedAt: new Date().toISOString() };
}
