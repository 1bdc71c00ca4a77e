/**
 * The wallet side: a wagmi config for the coordinator's chain (from `/v1/ledger`), the contract
 * the portal talks to, and plain words for what wallets and chains throw.
 */
import { CreditLedger } from "@sharedllm/contracts/artifacts";
import type { LedgerResponse } from "@sharedllm/protocol";
import { BaseError, defineChain, UserRejectedRequestError } from "viem";
import { createConfig, http, injected } from "wagmi";
import { walletConnect } from "wagmi/connectors";

export const ledgerAbi = CreditLedger.abi;

export function walletConfig(l: LedgerResponse) {
  const chain = defineChain({
    id: l.chainId,
    name: l.chainId === 31337 ? "SharedLLM dev chain" : `Chain ${l.chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [l.rpcUrl] } },
  });
  // WalletConnect where the build was given a project id (its provider package must be installed then)
  const projectId = import.meta.env.VITE_WALLETCONNECT_PROJECT_ID;
  return createConfig({
    chains: [chain],
    connectors: [injected(), ...(projectId ? [walletConnect({ projectId, showQrModal: true })] : [])],
    transports: { [chain.id]: http(l.rpcUrl) },
  });
}

/** What went wrong with a wallet request or a transaction, in a sentence for the user. */
export function walletError(err: unknown): string {
  if (err instanceof BaseError) {
    if (err.walk((e) => e instanceof UserRejectedRequestError || (e as { code?: number }).code === 4001)) {
      return "You rejected the request in your wallet. Nothing was signed or sent.";
    }
    const text = `${err.shortMessage} ${err.details ?? ""}`.toLowerCase();
    if (/insufficient funds|exceeds the balance|enough funds/.test(text)) {
      return "Your wallet does not have enough ETH to pay for this and its gas.";
    }
    if (text.includes("chain") && text.includes("mismatch"))
      return "Your wallet is on another chain: switch to the coordinator's chain first.";
    const reverted = err.walk((e) => (e as { name?: string }).name === "ContractFunctionRevertedError") as {
      reason?: string;
      data?: { errorName?: string };
    } | null;
    if (reverted) return `The contract refused: ${reverted.data?.errorName ?? reverted.reason ?? "reverted"}.`;
    return err.shortMessage;
  }
  if ((err as { code?: number })?.code === 4001) return "You rejected the request in your wallet. Nothing was signed or sent.";
  return (err as Error)?.message ?? String(err);
}

/** Credits are whole units (bigint); shown with thousands separators. */
export function credits(v: bigint | string | undefined): string {
  if (v === undefined) return "…";
  return BigInt(v).toLocaleString("en-US");
}

export function shortAddress(a: string): string {
  return `${a.slice(0, 6)}…${a.slice(-4)}`;
}
