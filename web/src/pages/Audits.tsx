/**
 * The operator's view of audits (docs/verification.md): the audit rates and window, the trusted
 * auditors, totals, each node's record (suspect and excluded nodes can be cleared), and recent
 * audits, a failed one with its evidence. It takes the operator key (an API key no wallet owns),
 * kept in this tab's sessionStorage only: it is gone when the tab closes, and never in localStorage.
 */
import { ApiError, type AuditRecord, type AuditScore, type AuditsResponse } from "@sharedllm/protocol";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, type RefObject, useEffect, useRef, useState } from "react";
import { api } from "../api.js";
import { Alert, Figure } from "../ui.js";
import { shortAddress } from "../wallet.js";

const KEY_STORAGE = "sharedllm.operatorKey";
const WHERE_THE_KEY_IS = "`sharedllm up` prints it as “API key”";

/** What a failure of the audits API means to the operator. */
function auditsError(err: Error): string {
  if (!(err instanceof ApiError)) return err.message;
  if (err.code === "invalid_api_key")
    return `The coordinator does not accept this key: it is wrong or revoked. Paste the operator key (${WHERE_THE_KEY_IS}).`;
  if (err.code === "missing_api_key") return `Paste the operator key (${WHERE_THE_KEY_IS}).`;
  if (err.status === 403)
    return `This key belongs to a wallet. Audits need the operator key, an API key no wallet owns (${WHERE_THE_KEY_IS}).`;
  if (err.status === 404) return "This coordinator does not audit jobs: it trusts no auditor.";
  return err.message;
}

/** A client error: asking again gets the same answer. */
const final = (err: Error | null) => err instanceof ApiError && err.status < 500;

const denied = (err: Error | null) => err instanceof ApiError && (err.status === 401 || err.status === 403);

const percent = (r: number) => `${(r * 100).toLocaleString("en-US", { maximumFractionDigits: 1 })}%`;

function duration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toLocaleString("en-US", { maximumFractionDigits: 1 })} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toLocaleString("en-US", { maximumFractionDigits: 1 })} min`;
  return `${(ms / 3_600_000).toLocaleString("en-US", { maximumFractionDigits: 1 })} h`;
}

const when = (iso: string) => new Date(iso).toLocaleString();

export function AuditsPage() {
  const [key, setKey] = useState(() => sessionStorage.getItem(KEY_STORAGE) ?? "");
  const audits = useQuery({
    queryKey: ["audits", key],
    queryFn: () => api<AuditsResponse>("/v1/audits?limit=50", { token: key }),
    enabled: !!key,
    // a refused key or a missing route does not change by asking again
    refetchInterval: (q) => (final(q.state.error) ? false : 5_000),
    retry: (n, err) => !final(err) && n < 1,
  });
  const refused = denied(audits.error);
  // the key is kept (in this tab only) once the coordinator accepts it
  useEffect(() => {
    if (audits.data && !refused) sessionStorage.setItem(KEY_STORAGE, key);
    if (refused) sessionStorage.removeItem(KEY_STORAGE);
  }, [audits.data, refused, key]);

  const submitKey = (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const k = new FormData(e.currentTarget).get("key");
    if (typeof k !== "string" || !k.trim()) return;
    if (k.trim() === key) audits.refetch();
    else setKey(k.trim());
  };
  const forget = () => {
    sessionStorage.removeItem(KEY_STORAGE);
    setKey("");
  };
  const a = refused ? undefined : audits.data;
  const error = audits.error ? auditsError(audits.error) : undefined;

  return (
    <>
      <section className="card" aria-labelledby="operator-h">
        <h2 id="operator-h">Operator key</h2>
        {!key || refused ? (
          <>
            <p className="muted">
              Audits are the operator's. Paste the operator key: the API key no wallet owns ({WHERE_THE_KEY_IS}). It is kept in this tab
              only (sessionStorage) and sent only to this coordinator.
            </p>
            <form onSubmit={submitKey} className="row">
              <label className="grow">
                Operator key
                <input
                  name="key"
                  type="password"
                  placeholder="sk-…"
                  autoComplete="off"
                  spellCheck={false}
                  aria-invalid={refused || undefined}
                  aria-describedby={refused ? "operator-error" : undefined}
                />
              </label>
              <button type="submit" className="primary" disabled={audits.isFetching}>
                Show audits
              </button>
            </form>
          </>
        ) : (
          <p>
            Using key <code>{key.slice(0, 8)}…</code> (kept in this tab only){" "}
            <button type="button" onClick={forget}>
              Forget key
            </button>
          </p>
        )}
        {error && (
          <p className="error" role="alert" id="operator-error">
            {error}
          </p>
        )}
        {key && audits.isPending && !error && <p className="muted">Loading…</p>}
      </section>
      {a && <Overview audits={a} token={key} />}
    </>
  );
}

function Overview({ audits: a, token }: { audits: AuditsResponse; token: string }) {
  return (
    <>
      <section className="card" aria-labelledby="rates-h">
        <h2 id="rates-h">Audit rates</h2>
        <p className="muted">The share of each node's paid jobs that an auditor re-scores, by the node's record.</p>
        <dl className="figures">
          <Figure label="New nodes">{percent(a.rates.newNodes)}</Figure>
          <Figure label="Established nodes">{percent(a.rates.established)}</Figure>
          <Figure label="Suspect nodes">{percent(a.rates.suspects)}</Figure>
          <Figure label="Audit window">{duration(a.windowMs)}</Figure>
        </dl>
        <p className="muted">Earnings wait for the audit window before they may settle; a failed audit forfeits those of the window.</p>
        <h3>Auditors</h3>
        {a.auditors.length === 0 ? (
          <p className="muted">This coordinator trusts no auditor.</p>
        ) : (
          <ul className="nodes" aria-label="Auditors">
            {a.auditors.map((x) => (
              <li key={x.id}>
                <span className={`dot ${x.connected ? "online" : ""}`} aria-hidden="true" /> <code title={x.id}>{shortAddress(x.id)}</code>{" "}
                {x.connected ? "connected" : "not connected"}
              </li>
            ))}
          </ul>
        )}
      </section>

      <dl className="figures card" aria-label="Audit totals">
        <Figure label="Queued" testId="total-queued">
          {a.totals.queued}
        </Figure>
        <Figure label="Running" testId="total-running">
          {a.totals.running}
        </Figure>
        <Figure label="Passed" testId="total-passed">
          {a.totals.passed}
        </Figure>
        <Figure label="Failed" testId="total-failed">
          {a.totals.failed}
        </Figure>
        <Figure label="Given up" testId="total-void">
          {a.totals.void}
        </Figure>
      </dl>

      <Nodes nodes={a.nodes} token={token} />
      <Recent recent={a.recent} />
    </>
  );
}

/** Each audited node's record; a suspect or excluded one can be cleared, after a confirmation. */
function Nodes({ nodes, token }: { nodes: AuditsResponse["nodes"]; token: string }) {
  const queries = useQueryClient();
  const [confirming, setConfirming] = useState<string>();
  const clear = useMutation({
    mutationFn: (node: string) => api(`/v1/audits/nodes/${node}/clear`, { method: "POST", token }),
    onSuccess: () => {
      setConfirming(undefined);
      return queries.invalidateQueries({ queryKey: ["audits"] });
    },
  });
  const confirmButton = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    if (confirming) confirmButton.current?.focus();
  }, [confirming]);
  return (
    <section className="card" aria-labelledby="audit-nodes-h">
      <h2 id="audit-nodes-h">Nodes</h2>
      {nodes.length === 0 ? (
        <p className="muted">No node has been audited yet.</p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Node</th>
                <th scope="col">Passed</th>
                <th scope="col">Failed</th>
                <th scope="col">Suspicion</th>
                <th scope="col">Standing</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {nodes.map((n) => (
                <NodeRows
                  key={n.node}
                  n={n}
                  confirming={confirming === n.node}
                  busy={clear.isPending}
                  confirmButton={confirmButton}
                  onClear={() => {
                    clear.reset();
                    setConfirming(n.node);
                  }}
                  onConfirm={() => clear.mutate(n.node)}
                  onCancel={() => setConfirming(undefined)}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Alert error={clear.error} />
    </section>
  );
}

function NodeRows(p: {
  n: AuditsResponse["nodes"][number];
  confirming: boolean;
  busy: boolean;
  confirmButton: RefObject<HTMLButtonElement | null>;
  onClear: () => void;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const { n } = p;
  const short = shortAddress(n.node);
  return (
    <>
      <tr data-node={n.node}>
        <td>
          <code title={n.node}>{short}</code>
        </td>
        <td>{n.passed}</td>
        <td>{n.failed}</td>
        <td>{n.suspicion}</td>
        <td className="wrap">
          {n.excluded ? (
            <span className="error">
              Excluded since {when(n.excluded.at)}: {n.excluded.reason}
            </span>
          ) : n.suspicion > 0 ? (
            <span className="warn">Suspect: audited more, served last</span>
          ) : (
            "In good standing"
          )}
        </td>
        <td>
          {(n.excluded || n.suspicion > 0) && !p.confirming && (
            <button type="button" onClick={p.onClear} aria-label={`Clear ${n.node}`}>
              Clear
            </button>
          )}
        </td>
      </tr>
      {p.confirming && (
        <tr className="confirm">
          <td colSpan={6}>
            <p>
              Clear <code>{n.node}</code>? Its suspicion{n.excluded ? " and its exclusion" : ""} end: it gets work as any node
              {n.excluded ? " and its key may register again" : ""}. Its record of passed and failed audits stays.
            </p>
            <div className="row">
              <button type="button" className="primary" ref={p.confirmButton} disabled={p.busy} onClick={p.onConfirm}>
                Yes, clear {short}
              </button>
              <button type="button" onClick={p.onCancel}>
                Cancel
              </button>
            </div>
          </td>
        </tr>
      )}
    </>
  );
}

/** Recent audits; a failed one expands to its evidence. */
function Recent({ recent }: { recent: AuditRecord[] }) {
  const [open, setOpen] = useState<ReadonlySet<string>>(new Set());
  const toggle = (id: string) =>
    setOpen((s) => {
      const next = new Set(s);
      if (!next.delete(id)) next.add(id);
      return next;
    });
  return (
    <section className="card" aria-labelledby="recent-h">
      <h2 id="recent-h">Recent audits</h2>
      {recent.length === 0 ? (
        <p className="muted">No audit yet.</p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Created</th>
                <th scope="col">Node</th>
                <th scope="col">Model</th>
                <th scope="col">Status</th>
                <th scope="col">Reason</th>
                <th scope="col">
                  <span className="sr-only">Evidence</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {recent.map((r) => (
                <RecentRows key={r.id} r={r} shown={open.has(r.id)} onToggle={() => toggle(r.id)} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function RecentRows({ r, shown, onToggle }: { r: AuditRecord; shown: boolean; onToggle: () => void }) {
  const evidenceId = `evidence-${r.id}`;
  return (
    <>
      <tr data-audit={r.id}>
        <td>{when(r.createdAt)}</td>
        <td>
          <code title={r.node}>{shortAddress(r.node)}</code>
        </td>
        <td>{r.model}</td>
        <td>
          <span className={r.status === "failed" ? "error" : r.status === "passed" ? "ok" : undefined}>{r.status}</span>
          {r.canary && <span className="tag"> canary</span>}
        </td>
        <td className="wrap">{r.reason ?? ""}</td>
        <td>
          {r.evidence && (
            <button type="button" aria-expanded={shown} aria-controls={evidenceId} onClick={onToggle}>
              {shown ? "Hide evidence" : "Evidence"}
            </button>
          )}
        </td>
      </tr>
      {r.evidence && shown && (
        <tr id={evidenceId} className="evidence-row">
          <td colSpan={6}>
            <Evidence evidence={r.evidence} />
          </td>
        </tr>
      )}
    </>
  );
}

/** What the node's receipt committed to, and the auditor's scores at each audited position. */
function Evidence({ evidence: e }: { evidence: NonNullable<AuditRecord["evidence"]> }) {
  const scores = e.scores as Partial<AuditScore>[];
  const num = (v: number | null | undefined) => (v == null ? "—" : v.toLocaleString("en-US"));
  const lp = (v: number | null | undefined) => (v == null ? "—" : v.toFixed(2));
  return (
    <div className="evidence">
      <dl>
        <dt>Prompt hash</dt>
        <dd>
          <code>{e.promptHash}</code>
        </dd>
        <dt>Output hash</dt>
        <dd>
          <code>{e.outputHash}</code>
        </dd>
        <dt>Prompt tokens</dt>
        <dd data-testid="evidence-prompt-tokens">
          {num(e.promptTokens)} claimed by the receipt, {num(e.auditedPromptTokens)} counted by the auditor
        </dd>
        <dt>Positions</dt>
        <dd>{e.positions.join(", ") || "none"}</dd>
        <dt>Auditor</dt>
        <dd>{e.auditor ? <code>{e.auditor}</code> : "—"}</dd>
      </dl>
      {scores.length > 0 && (
        <table>
          <caption>The auditor's scores per position (log-probabilities at temperature 1)</caption>
          <thead>
            <tr>
              <th scope="col">Position</th>
              <th scope="col">Claimed token</th>
              <th scope="col">Its rank</th>
              <th scope="col">Its log-prob</th>
              <th scope="col">Auditor's top token</th>
              <th scope="col">Top log-prob</th>
              <th scope="col">Floor log-prob</th>
            </tr>
          </thead>
          <tbody>
            {scores.map((s, i) => (
              // biome-ignore lint/suspicious/noArrayIndexKey: scores come in position order and never move
              <tr key={i}>
                <td>{num(s.position)}</td>
                <td>{s.position == null ? "—" : num(e.claimed[s.position])}</td>
                <td>{s.rank == null ? "not in its top tokens" : s.rank}</td>
                <td>{lp(s.logprob)}</td>
                <td>{num(s.top)}</td>
                <td>{lp(s.topLogprob)}</td>
                <td>{lp(s.floorLogprob)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
