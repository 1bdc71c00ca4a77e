/**
 * Cluster formation at the coordinator: which workers a head may have, for how long, and which
 * layer splits (and so which payouts) it may announce. The coordinator remembers each formation it
 * made; a head's plan is believed only over that formation's members, with distinct members and
 * shares adding up to exactly 10000, since every paid job of the head is split by those shares.
 * Decisions are pure (`decideForm`, `checkPlan`); `Clusters` carries them out over the fleet (a
 * `tunnel.session` to each worker, a `cluster.members` to the head) and remembers the formations.
 */
import { type AvailabilityReason, type ClusterMembers, type ClusterPlan, sharesByLayers } from "@sharedllm/protocol";
import type { FastifyBaseLogger } from "fastify";
import type { Fleet } from "./fleet.js";
import type { ConnectedNode } from "./units.js";

/** The longest a cluster session may live before its head forms it again. */
export const MAX_SESSION_MS = 24 * 3600_000;

/** What the cluster rules need to know of a connected node. */
export interface ClusterNode {
  id: string;
  role: "solo" | "worker" | "head";
  tunnel?: unknown;
  /** the owner's say: a worker that takes no work now is left out (default: it takes work) */
  available?: boolean;
  /** why not */
  unavailableReason?: string | null;
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
    else if (w.available === false) missing.push({ nodeId: id, reason: `not taking work (${w.unavailableReason ?? "its owner's say"})` });
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

/** How long a head waits for its invited workers to take the session. */
const READY_WAIT_MS = 5_000;

/** The clusters formed here: each head's latest formation, and the formations waiting for their workers. */
export class Clusters {
  /** cluster sessions waiting for their workers' `tunnel.ready` */
  private readonly waiting = new Map<string, { ready(nodeId: string): void }>();
  /** each head's latest formation, and the connection that made it: the only members its split may name */
  private readonly formations = new Map<string, { formation: Formation; by: ConnectedNode }>();

  constructor(private readonly fleet: Fleet) {}

  /**
   * A head asks for its workers: each worker hears which head may dial it, until when (no key:
   * the tunnel's keys come from the head's and the worker's own node keys) and says when it is
   * in place; then the head hears where the tunnels are (and who is missing).
   */
  async form(head: ConnectedNode, f: { sessionId: string; members: string[]; expiresAt: number }, log: FastifyBaseLogger): Promise<void> {
    const decision = this.waiting.has(f.sessionId)
      ? ({ ok: false, reason: "that cluster session id is in use" } as const)
      : decideForm(head, f, (id) => this.fleet.get(id), Date.now());
    if (!decision.ok) {
      log.warn({ nodeId: head.id, reason: decision.reason }, "cluster formation refused");
      head.send({ type: "cluster.members", sessionId: f.sessionId, members: [], missing: [], refused: decision.reason });
      return;
    }
    const { expiresAt, missing } = decision;
    // a new formation replaces the head's earlier one, and with it the split it may announce
    this.formations.delete(head.id);
    head.cluster = undefined;
    const members: ClusterMembers["members"] = [];
    const waiting = new Set<string>();
    for (const id of decision.invite) {
      const w = this.fleet.get(id) as ConnectedNode & { tunnel: NonNullable<ConnectedNode["tunnel"]> };
      waiting.add(id);
      w.send({ type: "tunnel.session", sessionId: f.sessionId, head: head.id, expiresAt });
      members.push({ nodeId: id, ...w.tunnel, freeMemoryBytes: w.heartbeat?.freeMemoryBytes ?? w.capabilities?.memoryBytes ?? 0 });
    }
    await new Promise<void>((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        this.waiting.delete(f.sessionId);
        resolve();
      };
      const timer = setTimeout(finish, READY_WAIT_MS);
      if (!waiting.size) return finish();
      this.waiting.set(f.sessionId, {
        ready(id) {
          waiting.delete(id);
          if (!waiting.size) finish();
        },
      });
    });
    const ready = members.filter((m) => !waiting.has(m.nodeId));
    for (const id of waiting) missing.push({ nodeId: id, reason: "did not take the session in time" });
    const formation = { sessionId: f.sessionId, head: head.id, members: new Set(ready.map((m) => m.nodeId)), expiresAt };
    this.formations.set(head.id, { formation, by: head });
    head.send({ type: "cluster.members", sessionId: f.sessionId, members: ready, missing, expiresAt });
    log.info({ head: head.id, members: ready.map((m) => m.nodeId), missing }, "cluster formed");
  }

  /** A worker took its session (`tunnel.ready`). */
  ready(sessionId: string, nodeId: string): void {
    this.waiting.get(sessionId)?.ready(nodeId);
  }

  /** A head announces its layer split: kept when `checkPlan` believes it; the reason when not. */
  plan(head: ConnectedNode, members: ClusterPlan["members"]): string | undefined {
    // a formation counts only on the connection that made it, while that node is still a head
    const f = this.formations.get(head.id);
    const refused = checkPlan(head.id, f?.by === head && head.role === "head" ? f.formation : undefined, members, Date.now());
    if (refused) return refused;
    head.cluster = members.map((m) => ({ ...m, nodeId: m.nodeId.toLowerCase() }));
    return undefined;
  }

  /**
   * A worker gave its work up (its owner needs the machine): every head whose split runs on it
   * loses that split (no jobs until it announces a new one, formed without the worker) and hands
   * its jobs in flight off, as they cannot go on.
   */
  withdraw(workerId: string, reason: AvailabilityReason, log: FastifyBaseLogger): void {
    for (const head of this.fleet.list()) {
      if (!head.cluster?.some((m) => m.nodeId === workerId)) continue;
      log.info({ head: head.id, worker: workerId, reason }, "a cluster member yielded to its owner; the head re-forms without it");
      head.cluster = undefined;
      head.handOff(reason);
    }
  }

  /** A head went away: its formation ends with it. */
  forget(headId: string): void {
    this.formations.delete(headId);
  }
}
