/**
 * The network map: serving units live (polled every 2 s): solo nodes, and LAN clusters as one
 * virtual node with its members and their layer split, each saying why it takes no jobs when it
 * does not (paused, schedule, owner-first); offline nodes below.
 */
import { type NetworkNode, type NetworkResponse, UNAVAILABLE_REASONS } from "@sharedllm/protocol";
import { useQuery } from "@tanstack/react-query";
import { api } from "../api.js";
import { Alert, Figure } from "../ui.js";
import { shortAddress } from "../wallet.js";

export function NetworkPage() {
  const network = useQuery({ queryKey: ["network"], queryFn: () => api<NetworkResponse>("/v1/network"), refetchInterval: 2_000 });
  const n = network.data;
  if (!n) return network.error ? <Alert error={network.error} /> : <p className="muted">Loading…</p>;
  const online = n.nodes.filter((x) => x.status === "online");
  const inCluster = new Set(online.flatMap((x) => (x.role === "head" ? (x.cluster ?? []).map((m) => m.nodeId) : [])));
  const units = online.filter((x) => x.role !== "worker" || !inCluster.has(x.id));
  const offline = n.nodes.filter((x) => x.status === "offline");
  const tps = online.reduce((s, x) => s + (x.tokensPerSecond ?? 0), 0);
  return (
    <>
      <dl className="figures card" aria-label="Network totals">
        <Figure label="Nodes online" testId="online">
          {n.totals.online}
        </Figure>
        <Figure label="Jobs running">{n.totals.activeJobs}</Figure>
        <Figure label="Throughput">{tps.toFixed(1)} tokens/s</Figure>
        <Figure label="Models">{n.models.map((m) => m.id).join(", ") || "none"}</Figure>
      </dl>
      <ul className="map" aria-label="Serving units">
        {units.map((u) => (
          <Unit key={u.id} node={u} />
        ))}
      </ul>
      {units.length === 0 && <p className="muted">No node is online.</p>}
      {offline.length > 0 && (
        <details>
          <summary>{offline.length} offline</summary>
          <ul className="offline">
            {offline.map((o) => (
              <li key={o.id}>
                {shortAddress(o.id)} · last seen {new Date(o.lastSeenAt).toLocaleString()}
              </li>
            ))}
          </ul>
        </details>
      )}
    </>
  );
}

function Unit({ node }: { node: NetworkNode }) {
  const cluster = node.role === "head" ? (node.cluster ?? []) : [];
  const layers = cluster.reduce((s, m) => s + m.layerCount, 0);
  return (
    <li className="unit" data-node={node.id}>
      <header>
        <span className={`dot ${node.accepting ? "online" : "paused"}`} aria-hidden="true" />
        <strong title={node.id}>{shortAddress(node.id)}</strong>
        <span className="tag">{node.role === "head" ? `cluster of ${cluster.length + 1}` : node.role}</span>
      </header>
      <p>
        {node.models.join(", ") || "no model loaded"} · {node.activeJobs}/{node.slots} busy
        {node.tokensPerSecond != null && ` · ${node.tokensPerSecond.toFixed(1)} tokens/s`}
      </p>
      {!node.accepting && (
        <p className="why" data-reason={node.reason ?? "none"}>
          Not taking jobs: {node.reason ? UNAVAILABLE_REASONS[node.reason] : node.role === "head" ? "no cluster split yet" : "unavailable"}
        </p>
      )}
      {node.capabilities?.cpuModel && (
        <p className="muted">
          {node.capabilities.cores} cores · {((node.capabilities.memoryBytes ?? 0) / 2 ** 30).toFixed(1)} GiB
        </p>
      )}
      {cluster.length > 0 && (
        <>
          <div className="split" role="img" aria-label={`Layer split over ${cluster.length} members`}>
            {cluster.map((m, i) => (
              <span
                key={m.nodeId}
                className={`seg s${i % 4}`}
                style={{ flexGrow: m.layerCount }}
                title={`${m.nodeId}: layers ${m.firstLayer}-${m.firstLayer + m.layerCount - 1}`}
              >
                {m.layerCount}
              </span>
            ))}
          </div>
          <ul className="members">
            {cluster.map((m, i) => (
              <li key={m.nodeId}>
                <span className={`swatch s${i % 4}`} aria-hidden="true" /> {shortAddress(m.nodeId)}: layers {m.firstLayer}–
                {m.firstLayer + m.layerCount - 1} of {layers}
                {m.rttMs != null && ` · ${m.rttMs.toFixed(2)} ms`}
                {m.throughputMiBps != null && ` · ${Math.round(m.throughputMiBps)} MiB/s`}
              </li>
            ))}
          </ul>
        </>
      )}
    </li>
  );
}
