/**
 * A transaction as the user follows it: confirm in the wallet, wait for the block, done or a
 * plain error. One hook for every write the portal makes.
 */
import { useState } from "react";
import type { Hash } from "viem";
import { usePublicClient } from "wagmi";
import { walletError } from "./wallet.js";

type TxState =
  | { step: "idle" }
  | { step: "wallet"; label: string }
  | { step: "mining"; label: string; hash: Hash }
  | { step: "done"; label: string; hash: Hash }
  | { step: "error"; label: string; message: string };

export function useTx() {
  const client = usePublicClient();
  const [state, setState] = useState<TxState>({ step: "idle" });
  /** Sends `send()` (a wallet write that returns the hash) and waits for it to be mined; true when it succeeded. */
  const run = async (label: string, send: () => Promise<Hash>): Promise<boolean> => {
    setState({ step: "wallet", label });
    try {
      const hash = await send();
      setState({ step: "mining", label, hash });
      const receipt = await (client as NonNullable<typeof client>).waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error("The transaction was mined but reverted.");
      setState({ step: "done", label, hash });
      return true;
    } catch (err) {
      setState({ step: "error", label, message: walletError(err) });
      return false;
    }
  };
  return { state, run, busy: state.step === "wallet" || state.step === "mining" };
}

export function TxStatus({ state }: { state: ReturnType<typeof useTx>["state"] }) {
  switch (state.step) {
    case "idle":
      return null;
    case "wallet":
      return (
        <p className="tx pending" role="status">
          {state.label}: confirm in your wallet…
        </p>
      );
    case "mining":
      return (
        <p className="tx pending" role="status">
          {state.label}: waiting for the block (<code>{state.hash.slice(0, 10)}…</code>)
        </p>
      );
    case "done":
      return (
        <p className="tx done" role="status">
          {state.label}: done.
        </p>
      );
    case "error":
      return (
        <p className="tx error" role="alert">
          {state.label} failed: {state.message}
        </p>
      );
  }
}
