/**
 * Federation (docs/federation.md): this site's registration in FederationRegistry, whether it
 * forwards jobs to peer sites and takes theirs, and each peer with its trust (the path, or why
 * not), its key, what it serves at what price, its latency and the jobs forwarded both ways.
 * Polled as often as the site reads the registry (every 1 to 5 s), so a revoked peer shows as
 * such within one refresh.
 * A coordinator without federation answers 404 to `GET /v1/federation`: the page says so.
 */
import { ApiError, type DistrustReason, type FederationPeer, type FederationResponse, type RegistryStatus } from "@sharedllm/protocol";
import { useQuery } from "@tanstack/react-query";
import type { ReactNode } from "react";
import { api } from "../api.js";
import { Alert, Figure } from "../ui.js";
import { credits, shortAddress } from "../wallet.js";

const notFederated = (err: Error | null) => err instanceof ApiError && err.status === 404;

const STATUS: Record<RegistryStatus, string> = {
  unregistered: "not registered: its operator runs sharedllm federation register",
  pending: "pending: registered, waiting for governance to admit it",
  admitted: "admitted by governance",
  revoked: "revoked by governance",
};

const DISTRUST: Record<DistrustReason, string> = {
  revoked: "revoked by governance",
  expired: "its key expired",
  not_admitted: "neither admitted by governance nor endorsed by this site",
  registry_unreadable: "this site cannot read the registry",
};

const when = (iso: string | null) => (iso ? new Date(iso).toLocaleString() : "—");

/** A site's name (and contact) from its registered metadata (JSON), when it gives one. */
function siteName(metadata: string | null): { name?: string; contact?: string } {
  try {
    const m: unknown = JSON.parse(metadata ?? "");
    if (!m || typeof m !== "object") return {};
    const { name, contact } = m as Record<string, unknown>;
    return { name: typeof name === "string" ? name : undefined, contact: typeof contact === "string" ? contact : undefined };
  } catch {
    return {};
  }
}

export function FederationPage() {
  const federation = useQuery({
    queryKey: ["federation"],
    queryFn: () => api<FederationResponse>("/v1/federation"),
    // as often as the site reads the registry (1-5 s), so a cut-off peer shows within one read; a
    // coordinator without federation does not grow one by asking again
    refetchInterval: (q) => (notFederated(q.state.error) ? false : Math.min(5_000, Math.max(1_000, q.state.data?.refreshMs ?? 3_000))),
    retry: (n, err) => !notFederated(err) && n < 1,
  });
  const f = federation.data;
  if (notFederated(federation.error))
    return (
      <section className="card" aria-labelledby="no-federation-h">
        <h2 id="no-federation-h">Not federated</h2>
        <p>
          This coordinator runs without federation: it serves only its own users on its own nodes, and takes no jobs from other sites. Its
          operator turns federation on with <code>--federation</code> (see docs/federation.md).
        </p>
      </section>
    );
  if (!f) return federation.error ? <Alert error={federation.error} /> : <p className="muted">Loading…</p>;
  return (
    <>
      <ThisSite federation={f} />
      <section className="card" aria-labelledby="forwarding-h">
        <h2 id="forwarding-h">Forwarding</h2>
        <dl className="figures">
          <Figure label="Jobs to peers" testId="outbound">
            {f.forwarding.outbound ? "on" : "off"}
          </Figure>
          <Figure label="Jobs from peers" testId="inbound">
            {f.forwarding.inbound ? "on" : "off"}
          </Figure>
          <Figure label="Running per peer, at most">{f.forwarding.inboundCapPerPeer ?? "no cap"}</Figure>
        </dl>
        <p className="muted">
          A job goes to a trusted peer only when no node of this site can take it, and only at a price no higher than this site charges.
        </p>
      </section>
      <Peers peers={f.peers} outbound={f.forwarding.outbound} />
    </>
  );
}

/** Label and value rows of a `<dl className="facts">`. */
function Fact({ label, children }: { label: string; children: ReactNode }) {
  return (
    <>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </>
  );
}

function ThisSite({ federation: f }: { federation: FederationResponse }) {
  const { name, contact } = siteName(f.self.metadata);
  return (
    <section className="card" aria-labelledby="self-h">
      <h2 id="self-h">This site</h2>
      <dl className="facts" aria-label="This site">
        <Fact label="Address">
          <code>{f.self.address}</code>
        </Fact>
        {name && <Fact label="Name">{name}</Fact>}
        {contact && <Fact label="Contact">{contact}</Fact>}
        <Fact label="Registry status">
          <span data-testid="self-status" className={f.self.status === "admitted" ? "ok" : f.self.status === "revoked" ? "error" : "warn"}>
            {STATUS[f.self.status]}
          </span>
        </Fact>
        <Fact label="URL">{f.self.url ?? "—"}</Fact>
        <Fact label="Key">{f.self.keyId == null ? "—" : `id ${f.self.keyId}, valid until ${when(f.self.validUntil)}`}</Fact>
        <Fact label="Registry">
          <code>{f.registry}</code> on chain {f.chainId}
        </Fact>
        <Fact label="Registry read">
          every {(f.refreshMs / 1000).toLocaleString("en-US")} s, last at {when(f.refreshedAt)}
        </Fact>
      </dl>
    </section>
  );
}

function Peers({ peers, outbound }: { peers: FederationPeer[]; outbound: boolean }) {
  return (
    <section className="card" aria-labelledby="peers-h">
      <h2 id="peers-h">Peer sites</h2>
      {peers.length === 0 ? (
        <p className="muted">No other site is registered in the registry.</p>
      ) : (
        <div className="table-wrap">
          <table className="peers" aria-labelledby="peers-h">
            <thead>
              <tr>
                <th scope="col">Site</th>
                <th scope="col">Trust</th>
                <th scope="col">Key</th>
                <th scope="col">Models</th>
                <th scope="col">Latency</th>
                <th scope="col">Jobs forwarded</th>
                <th scope="col">Credits owed</th>
              </tr>
            </thead>
            <tbody>
              {peers.map((p) => (
                <PeerRow key={p.address} peer={p} outbound={outbound} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      <p className="muted">
        Credits owed are by the federation receipts: what this site accepted owing a peer for the jobs it served, and what this site signed
        to a peer for the jobs it ran. They settle on chain with each site's batches.
      </p>
    </section>
  );
}

function PeerRow({ peer: p, outbound }: { peer: FederationPeer; outbound: boolean }) {
  const { name } = siteName(p.metadata);
  return (
    <tr data-peer={p.address}>
      <td>
        {name && <strong>{name} </strong>}
        <code title={p.address}>{shortAddress(p.address)}</code>
        <br />
        <span className="muted">{p.url}</span>
      </td>
      <td data-testid="trust">
        {p.trusted ? (
          <span className="ok">Trusted: {p.trustPath === "endorsed" ? "endorsed by this site" : "admitted by governance"}</span>
        ) : (
          <span className="error">Not trusted: {p.distrust ? DISTRUST[p.distrust] : p.status}</span>
        )}
      </td>
      <td>
        id {p.keyId}
        <br />
        <span className="muted" title={when(p.validUntil)}>
          until {new Date(p.validUntil).toLocaleDateString()}
        </span>
      </td>
      <td>
        <Models peer={p} outbound={outbound} />
      </td>
      <td>{p.capacity ? `${p.capacity.latencyMs.toLocaleString("en-US", { maximumFractionDigits: 1 })} ms` : "—"}</td>
      <td>
        <span data-testid="forwarded-out">{p.forwarded.out} to it</span>
        <br />
        <span data-testid="forwarded-in">{p.forwarded.in} from it</span>
      </td>
      <td>
        <span data-testid="credits-out">{credits(p.credits.out)} to it</span>
        <br />
        <span data-testid="credits-in">{credits(p.credits.in)} from it</span>
      </td>
    </tr>
  );
}

/** What a peer advertised at its last capacity read, or why there is nothing to show. */
function Models({ peer: p, outbound }: { peer: FederationPeer; outbound: boolean }) {
  if (!p.trusted) return <span className="muted">not asked: not trusted</span>;
  if (!p.capacity) return <span className="muted">{outbound ? "not read yet" : "not asked: jobs to peers are off"}</span>;
  return (
    <>
      {!p.capacity.inbound && <p className="warn">Takes no jobs from peers now.</p>}
      {p.capacity.models.length === 0 ? (
        <span className="muted">none served now</span>
      ) : (
        <ul className="nodes" aria-label={`Models of ${p.address}`}>
          {p.capacity.models.map((m) => (
            <li key={m.id} title={`GGUF sha256 ${m.sha256}`}>
              <strong>{m.id}</strong>
              <br />
              prompt {credits(m.pricePer1k.prompt)}, completion {credits(m.pricePer1k.completion)} credits per 1k tokens · {m.freeSlots}{" "}
              free {m.freeSlots === 1 ? "slot" : "slots"}
            </li>
          ))}
        </ul>
      )}
      <span className="muted">read {when(p.capacity.at)}</span>
    </>
  );
}
