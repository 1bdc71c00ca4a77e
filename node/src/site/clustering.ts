/**
 * Which cluster this daemon belongs to: the peers whose round trip (the fastest recent sample)
 * is under the threshold (2 ms) form a cluster with it; the head is the member with the most
 * memory (ties: the lowest address). Pure, from this daemon's own view of its peers.
 */

export interface Member {
  nodeId: string;
  address: string;
  memoryBytes: number;
  /** round trip from this daemon (the fastest recent sample); undefined until measured */
  rttMs?: number;
}

export interface Decision {
  role: "solo" | "head" | "worker";
  head: string;
  /** the cluster's members other than the head (node ids, sorted) */
  workers: string[];
}

function addressKey(address: string): number {
  return address.split(".").reduce((a, o) => a * 256 + Number(o), 0);
}

/**
 * A member of this daemon's cluster stays in it while its round trip is under this many times the
 * threshold: a round trip measured between two busy machines wobbles, and a cluster must not break
 * up (and re-form, reloading the model) whenever it crosses the line. A far link stays far.
 */
export const STAY_FACTOR = 2;

/** The round trip under which peers cluster, unless the operator says otherwise (`--cluster-rtt`). */
export const DEFAULT_THRESHOLD_MS = 2;

export function decideRole(self: Member, peers: Member[], thresholdMs = DEFAULT_THRESHOLD_MS, current?: Decision): Decision {
  const members = new Set(current && current.role !== "solo" ? [current.head, ...current.workers] : []);
  const near = peers.filter((p) => p.rttMs !== undefined && p.rttMs < thresholdMs * (members.has(p.nodeId) ? STAY_FACTOR : 1));
  if (!near.length) return { role: "solo", head: self.nodeId, workers: [] };
  const cluster = [self, ...near].sort((a, b) => b.memoryBytes - a.memoryBytes || addressKey(a.address) - addressKey(b.address));
  const head = cluster[0] as Member;
  const workers = cluster
    .slice(1)
    .map((m) => m.nodeId)
    .sort();
  return { role: head.nodeId === self.nodeId ? "head" : "worker", head: head.nodeId, workers };
}

/** Whether two decisions need the same daemon: a worker serves its head whoever else joins. */
export function sameDecision(a: Decision | undefined, b: Decision): boolean {
  return !!a && a.role === b.role && a.head === b.head && (a.role === "worker" || a.workers.join() === b.workers.join());
}
