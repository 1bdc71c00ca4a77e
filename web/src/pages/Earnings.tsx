/**
 * The contributor's view: the nodes whose key is this wallet (a node earns at its own address),
 * what they served and earned by day, what is pending settlement, and a claim of what is settled
 * (the proof comes from the coordinator; anyone may send a claim, the credits go to the node).
 */
import type { EarningsResponse, LedgerResponse, NetworkResponse } from "@sharedllm/protocol";
import { useQuery } from "@tanstack/react-query";
import { type FormEvent, useState } from "react";
import { isAddress } from "viem";
import { useConnection, useReadContract, useWriteContract } from "wagmi";
import { api } from "../api.js";
import { TxStatus, useTx } from "../tx.js";
import { Alert, Figure } from "../ui.js";
import { credits, ledgerAbi, shortAddress } from "../wallet.js";

export function EarningsPage({ ledger }: { ledger: LedgerResponse }) {
  const { address } = useConnection();
  const [lookup, setLookup] = useState("");
  const [node, setNode] = useState<`0x${string}` | undefined>();
  const target = node ?? address;
  const earnings = useQuery({
    queryKey: ["earnings", target],
    queryFn: () => api<EarningsResponse>(`/v1/earnings/${target}`),
    enabled: !!target,
    refetchInterval: 5_000,
  });
  const network = useQuery({ queryKey: ["network"], queryFn: () => api<NetworkResponse>("/v1/network"), refetchInterval: 3_000 });
  const mine = network.data?.nodes.filter((n) => n.id.toLowerCase() === target?.toLowerCase()) ?? [];
  const onChain = useReadContract({
    address: ledger.ledger,
    abi: ledgerAbi,
    functionName: "credits",
    args: [target ?? "0x"],
    query: { enabled: !!target },
  });
  const { writeContractAsync } = useWriteContract();
  const tx = useTx();
  const e = earnings.data;

  const claim = async () => {
    const c = e?.claim;
    if (!c || !target) return;
    await tx.run(`Claiming ${credits(e.claimable)} credits`, () =>
      writeContractAsync({
        address: ledger.ledger,
        abi: ledgerAbi,
        functionName: "claim",
        args: [ledger.coordinator, target, BigInt(c.cumulative), c.proof],
      }),
    );
    await Promise.all([earnings.refetch(), onChain.refetch()]);
  };
  const look = (ev: FormEvent) => {
    ev.preventDefault();
    if (isAddress(lookup.trim())) setNode(lookup.trim() as `0x${string}`);
  };

  return (
    <>
      <section className="card" aria-labelledby="nodes-h">
        <h2 id="nodes-h">Nodes at {target ? shortAddress(target) : "…"}</h2>
        <p className="muted">A node earns at the address of its key (`sharedllm node status` shows it). Look up another node:</p>
        <form onSubmit={look} className="row">
          <label>
            Node address
            <input value={lookup} onChange={(ev) => setLookup(ev.target.value)} placeholder="0x…" spellCheck={false} />
          </label>
          <button type="submit" disabled={!isAddress(lookup.trim())}>
            Show
          </button>
          {node && (
            <button type="button" onClick={() => setNode(undefined)}>
              Back to my wallet
            </button>
          )}
        </form>
        {mine.length === 0 ? (
          <p className="muted">No node with this address is known to this coordinator.</p>
        ) : (
          <ul className="nodes">
            {mine.map((n) => (
              <li key={n.id}>
                <span className={`dot ${n.status}`} aria-hidden="true" /> {n.status} · {n.role} · {n.models.join(", ") || "no model"}
                {n.tokensPerSecond != null && ` · ${n.tokensPerSecond.toFixed(1)} tokens/s`}
              </li>
            ))}
          </ul>
        )}
        {e && (
          <p>
            Served {e.served.jobs.toLocaleString("en-US")} {e.served.jobs === 1 ? "job" : "jobs"},{" "}
            {(e.served.promptTokens + e.served.completionTokens).toLocaleString("en-US")} tokens.
          </p>
        )}
      </section>

      <section className="card" aria-labelledby="earned-h">
        <h2 id="earned-h">Earnings</h2>
        <Alert error={earnings.error} />
        <dl className="figures">
          <Figure label="Earned">{credits(e?.earned)}</Figure>
          <Figure label="Pending settlement">{credits(e?.pending)}</Figure>
          <Figure label="Claimable" testId="claimable">
            {credits(e?.claimable)}
          </Figure>
          <Figure label="Claimed">{credits(e?.claimed)}</Figure>
          <Figure label="Set aside" testId="set-aside">
            {credits(e?.setAside)}
          </Figure>
          <Figure label="On-chain credits" testId="onchain">
            {credits(onChain.data)}
          </Figure>
        </dl>
        <button type="button" className="primary" disabled={tx.busy || !e || BigInt(e.claimable) === 0n} onClick={claim}>
          Claim {e && BigInt(e.claimable) > 0n ? `${credits(e.claimable)} credits` : ""}
        </button>
        <TxStatus state={tx.state} />
        {e && <DayChart days={e.byDay} />}
      </section>

      {e && <AuditRecord audits={e.audits} />}
    </>
  );
}

/** The node's audit record: a share of its paid jobs is re-scored by an auditor. */
function AuditRecord({ audits: a }: { audits: EarningsResponse["audits"] }) {
  return (
    <section className="card" aria-labelledby="audits-h">
      <h2 id="audits-h">Audits</h2>
      <p className="muted">
        A share of this node's paid jobs is audited: a trusted auditor re-scores the output it claimed. A failed audit forfeits its earnings
        of the audit window; forfeited earnings are never paid and are counted in the “Set aside” figure above.
      </p>
      <dl className="figures">
        <Figure label="Passed" testId="audits-passed">
          {a.passed}
        </Figure>
        <Figure label="Failed" testId="audits-failed">
          {a.failed}
        </Figure>
        <Figure label="Suspicion" testId="audits-suspicion">
          {a.suspicion}
        </Figure>
      </dl>
      {a.excluded ? (
        <p className="error" data-testid="audits-excluded">
          Excluded since {new Date(a.excluded.at).toLocaleString()}: {a.excluded.reason}. It gets no work and may not register again until
          the coordinator's operator clears it.
        </p>
      ) : a.suspicion > 0 ? (
        <p className="warn">
          Suspect: {a.suspicion} failed {a.suspicion === 1 ? "audit" : "audits"} not cleared, so more of its jobs are audited and it gets
          work after other nodes.
        </p>
      ) : (
        <p>In good standing.</p>
      )}
    </section>
  );
}

/** Credits earned per day, as bars (the last 30 days with earnings). */
function DayChart({ days }: { days: EarningsResponse["byDay"] }) {
  const shown = days.slice(-30);
  if (!shown.length) return <p className="muted">Nothing earned yet.</p>;
  const max = shown.reduce((m, d) => (BigInt(d.credits) > m ? BigInt(d.credits) : m), 1n);
  const w = 24;
  const h = 120;
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${shown.length * w} ${h + 20}`} role="img" aria-label="Credits earned per day">
        {shown.map((d, i) => {
          const bh = Math.max(2, Number((BigInt(d.credits) * BigInt(h)) / max));
          return (
            <g key={d.day}>
              <rect x={i * w + 3} y={h - bh} width={w - 6} height={bh} rx={2}>
                <title>{`${d.day}: ${credits(d.credits)} credits`}</title>
              </rect>
              <text x={i * w + w / 2} y={h + 14} textAnchor="middle">
                {d.day.slice(8)}
              </text>
            </g>
          );
        })}
      </svg>
      <figcaption>Credits earned per day</figcaption>
    </figure>
  );
}
