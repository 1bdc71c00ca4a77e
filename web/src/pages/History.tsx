/**
 * The wallet's history on the chain (docs/indexing.md), as the coordinator's embedded indexer read
 * it: credits bought, escrow deposits and withdrawals, settlements that charged the wallet, a
 * node's claims (the wallet's own address, or another node's looked up), and the federation's
 * events. Every row links its transaction: to the block explorer the coordinator names, else (the
 * dev chain has none) to the coordinator's own record of that transaction.
 */
import type {
  ClaimItem,
  EscrowItem,
  FederationItem,
  HistoryItemBase,
  HistoryStatus,
  HistoryPage as Page,
  PurchaseItem,
  SettlementItem,
} from "@sharedllm/protocol";
import { useInfiniteQuery, useQuery } from "@tanstack/react-query";
import { type FormEvent, type ReactNode, useState } from "react";
import { isAddress } from "viem";
import { useConnection } from "wagmi";
import { api } from "../api.js";
import { Alert } from "../ui.js";
import { credits, shortAddress } from "../wallet.js";

const PAGE = 20;

export function HistoryPage() {
  const { address } = useConnection();
  const [lookup, setLookup] = useState("");
  const [other, setOther] = useState<string | undefined>();
  const target = (other ?? address)?.toLowerCase();
  const status = useQuery({
    queryKey: ["history-status"],
    queryFn: () => api<HistoryStatus>("/v1/history/status"),
    refetchInterval: 5_000,
  });
  const explorer = status.data?.explorerUrl ?? null;
  const link = (hash: string) => (explorer ? `${explorer}/tx/${hash}` : `/v1/history/transactions/${hash}`);
  const look = (ev: FormEvent) => {
    ev.preventDefault();
    if (isAddress(lookup.trim())) setOther(lookup.trim());
  };
  if (!target) return null;
  return (
    <>
      <section className="card" aria-labelledby="history-of-h">
        <h2 id="history-of-h">History of {other ? shortAddress(target) : "this wallet"}</h2>
        <p className="muted" data-testid="indexed-block">
          {status.data?.block
            ? `Read from the chain up to block ${status.data.block}.`
            : status.data?.indexing === false
              ? "This coordinator does not index the chain (it was started with --no-index)."
              : status.isError
                ? "This coordinator's history cannot be read now."
                : "The chain is being read…"}
          {status.data?.lastError && ` The last read failed: ${status.data.lastError}`}
        </p>
        <form className="row" onSubmit={look}>
          <label>
            Another address (a node's)
            <input value={lookup} onChange={(e) => setLookup(e.target.value)} placeholder="0x…" spellCheck={false} />
          </label>
          <button type="submit" disabled={!isAddress(lookup.trim())}>
            Show
          </button>
          {other && (
            <button type="button" onClick={() => setOther(undefined)}>
              Back to this wallet
            </button>
          )}
        </form>
      </section>
      <Section<PurchaseItem>
        id="purchases"
        title="Credits bought"
        path={`/v1/history/${target}/purchases`}
        empty="No credits bought."
        columns={["Credits", "Paid"]}
        cells={(i) => [credits(i.credits), i.token === ZERO ? `${credits(i.paid)} wei` : `${credits(i.paid)} stablecoin units`]}
        link={link}
      />
      <Section<EscrowItem>
        id="escrow"
        title="Escrow"
        path={`/v1/history/${target}/escrow`}
        empty="No deposits or withdrawals."
        columns={["Movement", "Credits", "Coordinator"]}
        cells={(i) => [ESCROW[i.kind], credits(i.amount), <Addr key="c" a={i.coordinator} />]}
        link={link}
      />
      <Section<SettlementItem>
        id="settlements"
        title="Settlements that charged it"
        path={`/v1/history/${target}/settlements`}
        empty="No settlement has charged it yet."
        columns={["Batch", "Spent in all", "Coordinator"]}
        cells={(i) => [`#${i.batchId}`, credits(i.cumulativeSpent), <Addr key="c" a={i.coordinator} />]}
        link={link}
      />
      <Section<ClaimItem>
        id="claims"
        title="Claims of a node's earnings"
        path={`/v1/history/${target}/claims`}
        empty="No claims."
        columns={["Credits", "Claimed in all", "Coordinator"]}
        cells={(i) => [credits(i.amount), credits(i.cumulative), <Addr key="c" a={i.coordinator} />]}
        link={link}
      />
      <Section<FederationItem>
        id="federation"
        title="Federation"
        path="/v1/history/federation"
        empty="No site has registered yet."
        columns={["Event", "Site", "By"]}
        cells={(i) => [FEDERATION[i.kind], <Addr key="s" a={i.coordinator} />, i.by ? <Addr key="b" a={i.by} /> : "—"]}
        link={link}
      />
    </>
  );
}

const ZERO = "0x0000000000000000000000000000000000000000";

const ESCROW: Record<EscrowItem["kind"], string> = {
  deposit: "deposit",
  withdrawal_request: "withdrawal announced",
  withdrawal: "withdrawal",
};

const FEDERATION: Record<FederationItem["kind"], string> = {
  registered: "registered",
  updated: "updated its URL or metadata",
  key_renewed: "renewed its key",
  admitted: "admitted by governance",
  revoked: "revoked by governance",
  endorsed: "endorsed",
  unendorsed: "endorsement withdrawn",
  accepted: "owed credits accepted",
};

function Addr({ a }: { a: string }) {
  return <span title={a}>{shortAddress(a)}</span>;
}

/** One kind of history: a table of its items, newest first, with "Show older" while there are more. */
function Section<T extends HistoryItemBase>(p: {
  id: string;
  title: string;
  path: string;
  empty: string;
  columns: string[];
  cells: (item: T) => ReactNode[];
  link: (hash: string) => string;
}) {
  const q = useInfiniteQuery({
    queryKey: ["history", p.path],
    queryFn: ({ pageParam }) => api<Page<T>>(`${p.path}?limit=${PAGE}${pageParam ? `&cursor=${pageParam}` : ""}`),
    initialPageParam: "",
    getNextPageParam: (last) => last.nextCursor ?? undefined,
    refetchInterval: 5_000,
  });
  const items = q.data?.pages.flatMap((pg) => pg.data) ?? [];
  return (
    <section className="card" aria-labelledby={`${p.id}-h`} data-testid={`history-${p.id}`}>
      <h2 id={`${p.id}-h`}>{p.title}</h2>
      {q.isPending ? (
        <p className="muted">Loading…</p>
      ) : items.length === 0 ? (
        <p className="muted">{p.empty}</p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">When</th>
                {p.columns.map((c) => (
                  <th scope="col" key={c}>
                    {c}
                  </th>
                ))}
                <th scope="col">Transaction</th>
              </tr>
            </thead>
            <tbody>
              {items.map((i) => (
                <tr key={`${i.transactionHash}:${i.logIndex}`}>
                  <td title={`block ${i.blockNumber}`}>{new Date(i.timestamp * 1000).toLocaleString()}</td>
                  {p.cells(i).map((c, n) => (
                    <td key={p.columns[n]}>{c}</td>
                  ))}
                  <td>
                    <a href={p.link(i.transactionHash)} target="_blank" rel="noreferrer" title={i.transactionHash}>
                      {shortAddress(i.transactionHash)}
                    </a>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {q.hasNextPage && (
        <button type="button" disabled={q.isFetchingNextPage} onClick={() => q.fetchNextPage()}>
          {q.isFetchingNextPage ? "Loading…" : "Show older"}
        </button>
      )}
      <Alert error={q.error} />
    </section>
  );
}
