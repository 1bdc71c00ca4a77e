/**
 * Credits: what the signed-in wallet can spend here (escrow on chain less the coordinator's spend
 * journal), buying credits into escrow, and withdrawing unspent escrow after the notice period.
 */
import type { AccountResponse, LedgerResponse } from "@sharedllm/protocol";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, useState } from "react";
import { formatEther } from "viem";
import { useBalance, useBlock, useConnection, useReadContract, useWriteContract } from "wagmi";
import { api } from "../api.js";
import { useSession } from "../session.js";
import { TxStatus, useTx } from "../tx.js";
import { Alert, Figure } from "../ui.js";
import { credits, ledgerAbi } from "../wallet.js";

export function useAccountBalance() {
  const token = useSession()?.session?.token;
  return useQuery({
    queryKey: ["account", token],
    queryFn: () => api<AccountResponse>("/v1/account", { token }),
    enabled: !!token,
    refetchInterval: 5_000,
  });
}

export function CreditsPage({ ledger }: { ledger: LedgerResponse }) {
  const { address } = useConnection();
  const account = useAccountBalance();
  const queries = useQueryClient();
  const contract = { address: ledger.ledger, abi: ledgerAbi } as const;
  const price = useReadContract({ ...contract, functionName: "weiPerCredit" });
  const notice = useReadContract({ ...contract, functionName: "withdrawalNotice" });
  const escrow = useReadContract({
    ...contract,
    functionName: "escrows",
    args: [address ?? "0x", ledger.coordinator],
    query: { enabled: !!address },
  });
  const free = useReadContract({ ...contract, functionName: "credits", args: [address ?? "0x"], query: { enabled: !!address } });
  const eth = useBalance({ address, query: { enabled: !!address } });
  // the notice runs on the chain's clock
  const block = useBlock({ watch: true });
  const { writeContractAsync } = useWriteContract();
  const tx = useTx();
  const [amount, setAmount] = useState("1000");
  const [withdrawAmount, setWithdrawAmount] = useState("");

  const refresh = async () => {
    await Promise.all([
      escrow.refetch(),
      free.refetch(),
      eth.refetch(),
      block.refetch(),
      queries.invalidateQueries({ queryKey: ["account"] }),
    ]);
  };
  const units = (s: string): bigint | undefined => (/^\d+$/.test(s.trim()) && BigInt(s) > 0n ? BigInt(s) : undefined);

  const buy = async (e: FormEvent) => {
    e.preventDefault();
    const n = units(amount);
    if (!n || price.data === undefined) return;
    await tx.run(`Buying ${credits(n)} credits`, () =>
      writeContractAsync({ ...contract, functionName: "buy", args: [ledger.coordinator], value: n * price.data }),
    );
    await refresh();
  };
  const depositFree = async () => {
    if (!free.data) return;
    const n = free.data;
    await tx.run(`Depositing ${credits(n)} credits`, () =>
      writeContractAsync({ ...contract, functionName: "deposit", args: [ledger.coordinator, n] }),
    );
    await refresh();
  };
  const requestWithdrawal = async (e: FormEvent) => {
    e.preventDefault();
    const n = units(withdrawAmount);
    if (!n) return;
    await tx.run(`Announcing a withdrawal of ${credits(n)} credits`, () =>
      writeContractAsync({ ...contract, functionName: "requestWithdrawal", args: [ledger.coordinator, n] }),
    );
    await refresh();
  };
  const withdraw = async () => {
    await tx.run("Withdrawing", () => writeContractAsync({ ...contract, functionName: "withdraw", args: [ledger.coordinator] }));
    await refresh();
  };

  const a = account.data;
  const [, , pending, unlockAt] = escrow.data ?? [0n, 0n, 0n, 0n];
  const unlocked = pending > 0n && block.data !== undefined && block.data.timestamp >= unlockAt;
  const n = units(amount);
  return (
    <>
      <section className="card" aria-labelledby="balance-h">
        <h2 id="balance-h">Balance</h2>
        <Alert error={account.error} />
        <dl className="figures">
          <Figure label="Available" testId="available">
            {credits(a?.available)}
          </Figure>
          <Figure label="In escrow">{a ? credits(BigInt(a.deposited) - BigInt(a.settledSpent)) : "…"}</Figure>
          <Figure label="Spent, not yet settled">{credits(a?.charged)}</Figure>
          <Figure label="Reserved by running jobs">{credits(a?.held)}</Figure>
          <Figure label="Pending withdrawal">{credits(a?.pendingWithdrawal)}</Figure>
        </dl>
        <p className="muted">
          Wallet: {eth.data ? `${Number(formatEther(eth.data.value)).toFixed(4)} ETH` : "…"} · credits outside escrow: {credits(free.data)}
        </p>
      </section>

      <section className="card" aria-labelledby="buy-h">
        <h2 id="buy-h">Buy credits</h2>
        <form onSubmit={buy} className="row">
          <label>
            Credits
            <input inputMode="numeric" value={amount} onChange={(e) => setAmount(e.target.value)} aria-describedby="buy-cost" />
          </label>
          <button type="submit" className="primary" disabled={tx.busy || !n || price.data === undefined}>
            Buy and deposit
          </button>
        </form>
        <p id="buy-cost" className="muted">
          {n && price.data !== undefined ? `Costs ${formatEther(n * price.data)} ETH plus gas.` : "Enter a whole number of credits."} Bought
          credits go into escrow for this coordinator, which charges your API use against them.
        </p>
        {!!free.data && (
          <button type="button" disabled={tx.busy} onClick={depositFree}>
            Deposit the {credits(free.data)} credits outside escrow
          </button>
        )}
        <TxStatus state={tx.state} />
      </section>

      <section className="card" aria-labelledby="withdraw-h">
        <h2 id="withdraw-h">Withdraw</h2>
        <p className="muted">
          Unspent escrow comes back after a notice of {notice.data === undefined ? "…" : `${Number(notice.data) / 3600} h`}, so the
          coordinator can settle what you spent first.
        </p>
        {pending > 0n ? (
          <p>
            {credits(pending)} credits{" "}
            {unlocked ? "can be withdrawn now." : `unlock at ${new Date(Number(unlockAt) * 1000).toLocaleString()}.`}{" "}
            <button type="button" disabled={tx.busy || !unlocked} onClick={withdraw}>
              Withdraw
            </button>
          </p>
        ) : (
          <form onSubmit={requestWithdrawal} className="row">
            <label>
              Credits
              <input inputMode="numeric" value={withdrawAmount} onChange={(e) => setWithdrawAmount(e.target.value)} />
            </label>
            <button type="submit" disabled={tx.busy || !units(withdrawAmount)}>
              Announce withdrawal
            </button>
          </form>
        )}
      </section>
    </>
  );
}
