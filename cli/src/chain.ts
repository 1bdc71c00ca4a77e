/**
 * The chain side of the CLI: the local dev chain that `sharedllm up` runs (Hardhat's JSON-RPC
 * node, in memory, supervised like the engine), contract deployment with records per network,
 * and the viem clients the credits commands use.
 */
import { join } from "node:path";
import { DEV_CHAIN_SCRIPT, DEV_DEPLOYER_KEY, DEV_TIMELOCK_DELAY_S, type Deployment, deployContracts } from "@sharedllm/contracts";
import { SharedLLMError, Supervisor } from "@sharedllm/node";
import {
  type Account,
  type Address,
  type Chain,
  createPublicClient,
  createTestClient,
  createWalletClient,
  defineChain,
  http,
  type LocalAccount,
  type PublicClient,
  parseEther,
  type Transport,
  type WalletClient,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createSiweMessage } from "viem/siwe";

/** Dev chain prices: 1 credit = 1 gwei, a withdrawal waits an hour. */
export const DEV_WEI_PER_CREDIT = 1_000_000_000n;
export const DEV_WITHDRAWAL_NOTICE_S = 3600n;
/** Dev chain cap on one settlement: a billion credits (1 ETH of dev coin). */
export const DEV_MAX_BATCH_SPEND = 1_000_000_000n;

export function chainClients(rpcUrl: string, chainId: number, account?: Account) {
  const chain = defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const transport = http(rpcUrl, { retryCount: 2, timeout: 15_000 });
  const publicClient = createPublicClient({ chain, transport, pollingInterval: 250 }) as PublicClient;
  const wallet = account && (createWalletClient({ chain, transport, account }) as WalletClient<Transport, Chain, Account>);
  return { publicClient, wallet, chain };
}

async function rpcAnswers(rpcUrl: string): Promise<boolean> {
  try {
    const res = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_chainId", params: [] }),
      signal: AbortSignal.timeout(2_000),
    });
    return res.ok;
  } catch {
    return false;
  }
}

/** Starts the dev chain on host:port; it keeps its state only while it runs. */
export async function startDevChain(o: { home: string; host: string; port: number }): Promise<{ rpcUrl: string; supervisor: Supervisor }> {
  const rpcUrl = `http://${o.host}:${o.port}`;
  if (await rpcAnswers(rpcUrl))
    throw new SharedLLMError("busy", `something already answers JSON-RPC on ${rpcUrl}; pick another port with --chain-port`);
  const supervisor = new Supervisor({
    name: "dev chain",
    command: process.execPath,
    args: ["--import", import.meta.resolve("tsx"), DEV_CHAIN_SCRIPT, o.host, String(o.port)],
    logFile: join(o.home, "logs", "dev-chain.log"),
    healthCheck: () => rpcAnswers(rpcUrl),
    startTimeoutMs: 60_000,
  });
  await supervisor.start();
  return { rpcUrl, supervisor };
}

/**
 * Deploys fresh contracts on the dev chain with its first well-known account, gives the coordinator
 * its role, and funds the coordinator and the given accounts with dev coins for gas.
 */
export async function deployDevContracts(rpcUrl: string, coordinator: Address, fund: Address[]): Promise<Deployment> {
  const { publicClient, wallet } = chainClients(
    rpcUrl,
    await createPublicClient({ transport: http(rpcUrl) }).getChainId(),
    privateKeyToAccount(DEV_DEPLOYER_KEY),
  );
  const deployment = await deployContracts({
    publicClient,
    wallet: wallet as WalletClient<Transport, Chain, Account>,
    weiPerCredit: DEV_WEI_PER_CREDIT,
    withdrawalNoticeSeconds: DEV_WITHDRAWAL_NOTICE_S,
    maxBatchSpend: DEV_MAX_BATCH_SPEND,
    timelockDelaySeconds: DEV_TIMELOCK_DELAY_S,
    coordinators: [coordinator],
    mockStablecoin: { unitsPerCredit: 1n },
  });
  const test = createTestClient({ mode: "hardhat", transport: http(rpcUrl) });
  for (const address of [coordinator, ...fund]) await test.setBalance({ address, value: parseEther("100") });
  return deployment;
}

/** Signs in at a coordinator with Ethereum (EIP-4361); returns the session token. */
export async function signInWithEthereum(coordinatorUrl: string, account: LocalAccount, chainId: number): Promise<string> {
  const url = new URL(coordinatorUrl);
  const nonceRes = await fetch(`${url.origin}/v1/auth/nonce`);
  if (!nonceRes.ok)
    throw new SharedLLMError("refused", `${url.origin} gives no sign-in nonce (${nonceRes.status}): does it run with credits?`);
  const { nonce } = (await nonceRes.json()) as { nonce: string };
  const message = createSiweMessage({
    address: account.address,
    chainId,
    domain: url.host,
    nonce,
    uri: url.origin,
    version: "1",
    statement: "Sign in to SharedLLM",
  });
  const signature = await account.signMessage({ message });
  const res = await fetch(`${url.origin}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ message, signature }),
  });
  const body = (await res.json()) as { token?: string; error?: { message: string } };
  if (!res.ok || !body.token) throw new SharedLLMError("refused", `sign-in refused: ${body.error?.message ?? res.status}`);
  return body.token;
}
