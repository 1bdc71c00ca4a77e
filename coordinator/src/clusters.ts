/**
 * Cluster formation at the coordinator: which workers a head may have, for how long, and which
 * layer splits (and so which payouts) it may announce. The coordinator remembers each formation it
 * made; a head's plan is believed only over that formation's members, with distinct members and
 * shares adding up to exactly 10000, since every paid job of the head is split by those shares.
 * Decisions are pure; the control plugin carries them out (a `tunnel.session` to each worker, a
 * `cluster.members` to the head).
 */
import { type ClusterPlan, sharesByLayers } from "@sharedllm/protocol";

/** The longest a cluster session may live before its head forms it again. */
export const MAX_SESSION_MS = 24 * 3600_000;

/** What the cluster rules need to know of a connected node. */
export interface ClusterNode {
  id: string;
  role: "solo" | "worker" | "head";
  tunnel?: unknown;
}

/** A cluster the coordinator formed: its head, the workers that took the session, and its end. */
export interface Formation {
  sessionId: string;
  head: string;
  members: ReadonlySet<string>;
  /** unix ms */
  expiresAt: number;
}

export type FormDecision =
  | { ok: false; reason: string }
  | {
      ok: true;
      /** the requested expiry, capped */
      expiresAt: number;
      /** workers to hand the session */
      invite: string[];
      missing: { nodeId: string; reason: string }[];
    };

/** Whether `head` may form a cluster of `members`, and which of them to invite. */
export function decideForm(
  head: ClusterNode,
  request: { members: readonly string[]; expiresAt: number },
  lookup: (id: string) => ClusterNode | undefined,
  now: number,
): FormDecision {
  if (head.role !== "head") return { ok: false, reason: `only a cluster head may form a cluster; this node said it is a ${head.role}` };
  if (request.expiresAt <= now) return { ok: false, reason: "the cluster session has already expired" };
  const invite: string[] = [];
  const missing: { nodeId: string; reason: string }[] = [];
  for (const id of new Set(request.members.map((m) => m.toLowerCase()))) {
    const w = lookup(id);
    if (id === head.id) missing.push({ nodeId: id, reason: "a head is not its own worker" });
    else if (!w) missing.push({ nodeId: id, reason: "not connected" });
    else if (w.role !== "worker" || !w.tunnel) missing.push({ nodeId: id, reason: "not a worker" });
    else invite.push(id);
  }
  return { ok: true, expiresAt: Math.min(request.expiresAt, now + MAX_SESSION_MS), invite, missing };
}

/**
 * Whether a head's layer split can be believed: it comes from the head of a live formation, names
 * only that formation's members (a head serves no layers of its own split), each once, over
 * layers that do not overlap, with shares that add up to exactly 10000 and follow the layers each
 * member serves (`sharesByLayers`), so a head cannot pay itself its workers' part. The reason when not.
 */
export function checkPlan(headId: string, formation: Formation | undefined, plan: ClusterPlan["members"], now: number): string | undefined {
  if (!formation || formation.head !== headId)
    return "this node formed no cluster here: a split comes only from the head of a formed cluster";
  if (formation.expiresAt <= now) return "the cluster session has expired: form the cluster again";
  if (!plan.length) return "a split needs at least one member";
  const seen = new Set<string>();
  let total = 0;
  for (const m of plan) {
    const id = m.nodeId.toLowerCase();
    if (seen.has(id)) return `${id} is named twice in the split`;
    seen.add(id);
    if (id === headId) return "a head serves no layers of its own split: only its workers are paid by it";
    if (!formation.members.has(id)) return `${id} is not a member of this head's cluster`;
    total += m.shareBps;
  }
  if (total !== 10_000) return `the shares add up to ${total} basis points, not 10000`;
  const layers = [...plan].sort((a, b) => a.firstLayer - b.firstLayer);
  for (let i = 1; i < layers.length; i++) {
    const prev = layers[i - 1] as (typeof layers)[number];
    if ((layers[i] as (typeof layers)[number]).firstLayer < prev.firstLayer + prev.layerCount) return "the members' layers overlap";
  }
  const fair = sharesByLayers(layers.map((m) => m.layerCount));
  const off = layers.find((m, i) => m.shareBps !== fair[i]);
  if (off)
    return `${off.nodeId.toLowerCase()}'s share (${off.shareBps} bps) is not its part of the layers (${fair[layers.indexOf(off)]} bps)`;
  return undefined;
}
