/**
 * `GET /v1/network`: every node this coordinator knows, online (with its last
 * heartbeat) or offline (with when it was last seen), and the models served (the
 * shape is protocol's NetworkResponse);
 * `GET /metrics`: Prometheus text. Both are read-only views for the portal, the
 * CLI and monitoring.
 */
import type { NetworkNode, NetworkResponse } from "@sharedllm/protocol";
import type { FastifyInstance } from "fastify";
import type { Db } from "../db/database.js";
import type { Fleet } from "../fleet.js";
import type { Metrics } from "../metrics.js";
import type { ConnectedNode } from "../units.js";

/** What a serving unit can hold: a head counts the members of its split (and itself). */
function capacity(n: ConnectedNode, fleet: Fleet): NetworkNode["capacity"] {
  const units = [n, ...(n.cluster ?? []).map((m) => fleet.get(m.nodeId)).filter((x) => x !== undefined)];
  if (!units.some((u) => u.capabilities)) return null;
  return {
    memoryBytes: units.reduce((s, u) => s + (u.capabilities?.memoryBytes ?? 0), 0),
    vramBytes: units.reduce((s, u) => s + (u.capabilities?.vramBytes ?? 0), 0),
  };
}

/** A node this replica holds, as /v1/network shows it (and as it tells the other replicas: docs/replicas.md). */
export function networkNode(n: ConnectedNode, fleet: Fleet): NetworkNode {
  return {
    id: n.id,
    status: "online",
    accepting: n.accepting,
    reason: n.unavailableReason,
    engine: n.engine,
    models: [...n.models.keys()],
    slots: n.slots,
    activeJobs: n.active,
    load: n.heartbeat?.load ?? null,
    freeMemoryBytes: n.heartbeat?.freeMemoryBytes ?? null,
    tokensPerSecond: n.heartbeat?.tokensPerSecond ?? null,
    capabilities: n.capabilities ?? null,
    role: n.role,
    cluster: n.cluster ?? null,
    capacity: capacity(n, fleet),
    lastSeenAt: new Date(n.lastSeenAt).toISOString(),
  };
}

export async function networkPlugin(app: FastifyInstance, o: { db: Db; fleet: Fleet; metrics: Metrics }): Promise<void> {
  app.get("/v1/network", async (): Promise<NetworkResponse> => {
    // the nodes of every replica: another's as it last told them, with their jobs from every replica
    const local = o.fleet.list().map((n) => networkNode(n, o.fleet));
    const online = [...local, ...o.fleet.remotes().map((n) => n.network)];
    const onlineIds = new Set(online.map((n) => n.id));
    const nodes: NetworkNode[] = [...online];
    for (const row of await o.db.selectFrom("nodes").selectAll().orderBy("last_seen_at", "desc").limit(1_000).execute()) {
      if (onlineIds.has(row.id)) continue;
      nodes.push({
        id: row.id,
        status: "offline",
        accepting: false,
        reason: null,
        engine: row.engine,
        models: [],
        slots: 0,
        activeJobs: 0,
        load: null,
        freeMemoryBytes: null,
        tokensPerSecond: null,
        capabilities: null,
        role: "solo",
        cluster: null,
        capacity: null,
        lastSeenAt: new Date(row.last_seen_at).toISOString(),
      });
    }
    const models = new Map<string, number>();
    for (const n of online) for (const id of n.models) models.set(id, (models.get(id) ?? 0) + 1);
    return {
      nodes,
      models: [...models].map(([id, count]) => ({ id, nodes: count })),
      totals: {
        online: online.length,
        offline: nodes.length - online.length,
        activeJobs: online.reduce((s, n) => s + n.activeJobs, 0),
      },
    };
  });

  app.get("/metrics", async (_req, reply) => {
    reply.header("content-type", o.metrics.registry.contentType);
    return o.metrics.registry.metrics();
  });
}
