/**
 * Cluster formation at the coordinator: which workers a head may have, for how long, and which
 * layer splits (and so which payouts) it may announce. The coordinator remembers each formation it
 * made; a head's plan is believed only over that formation's members, with distinct members and
 * shares adding up to exactly 10000, since every paid job of the head is split by those shares;
 * and only once every member's own signed report of the layers the head placed on it (seen by its
 * tunnel end in the RPC stream) says the same. Decisions are pure (`decideForm`, `checkPlan`,
 * `checkReport`, `judgePlan`); `Clusters` carries them out over the fleet (a `tunnel.session` to
 * each worker, a `cluster.members` to the head) and remembers the formations, plans and reports.
 */
import {
  type AvailabilityReason,
  type ClusterLayers,
  type ClusterMembers,
  type ClusterPlan,
  type ConfirmedMember,
  clusterLayersMessage,
  sharesByLayers,
} from "@sharedllm/protocol";
import type { FastifyBaseLogger } from "fastify";
import { recoverMessageAddress } from "viem";
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

/** What a worker's own signed report says its head placed on it (`cluster.layers`). */
export type LayerReport = Pick<ClusterLayers, "firstLayer" | "layerCount" | "contiguous" | "tensorBytes">;

/**
 * Whether a worker's layer report can be kept: it comes from a worker of the formation it names,
 * which is that head's current one and still live. The reason when not. (Its signature is checked
 * apart, the one step that waits.)
 */
export function checkReport(
  worker: Pick<ClusterNode, "id" | "role">,
  report: Pick<ClusterLayers, "sessionId" | "head">,
  formation: Formation | undefined,
  now: number,
): string | undefined {
  if (worker.role !== "worker") return "only a cluster worker reports the layers placed on it";
  if (formation?.sessionId !== report.sessionId || formation.head !== report.head.toLowerCase())
    return "that session is not the current formation of that head";
  if (!formation.members.has(worker.id)) return "this worker is not a member of that formation";
  if (formation.expiresAt <= now) return "the cluster session has expired";
  return undefined;
}

const layers = (r: { firstLayer: number; layerCount: number }) => `${r.firstLayer}-${r.firstLayer + r.layerCount - 1}`;
const seen = (r: LayerReport) => `${layers(r)}${r.contiguous ? "" : " with gaps"}`;

export type PlanVerdict =
  | { state: "confirmed"; members: ConfirmedMember[] }
  | { state: "waiting"; missing: string[] }
  | { state: "refused"; member: string; claimed: string; observed: string; reason: string };

/**
 * Whether a split (one `checkPlan` believes) is what its members saw: each member's own report
 * names exactly the split's layers for it, with none missing between, and no other member of the
 * formation holds layers. Confirmed when every member agrees, waiting while one has not reported,
 * refused at the first disagreement.
 */
export function judgePlan(plan: ClusterPlan["members"], reports: ReadonlyMap<string, LayerReport>): PlanVerdict {
  const missing: string[] = [];
  const confirmed: ConfirmedMember[] = [];
  for (const m of plan) {
    const id = m.nodeId.toLowerCase();
    const r = reports.get(id);
    if (!r) missing.push(id);
    else if (!r.contiguous || r.firstLayer !== m.firstLayer || r.layerCount !== m.layerCount) {
      const reason = `${id} holds layers ${seen(r)} by its own report, not ${layers(m)}`;
      return { state: "refused", member: id, claimed: layers(m), observed: seen(r), reason };
    } else confirmed.push({ ...m, nodeId: id, tensorBytes: r.tensorBytes });
  }
  const named = new Set(plan.map((m) => m.nodeId.toLowerCase()));
  for (const [id, r] of reports) {
    if (named.has(id)) continue;
    const reason = `${id} holds layers ${seen(r)} by its own report, and the split does not name it`;
    return { state: "refused", member: id, claimed: "none", observed: seen(r), reason };
  }
  return missing.length ? { state: "waiting", missing } : { state: "confirmed", members: confirmed };
}

/** How long a head waits for its invited workers to take the session. */
const READY_WAIT_MS = 5_000;
/** How long a split waits for its members' reports before that is logged (a large model loads for minutes). */
const CONFIRM_WAIT_MS = 5 * 60_000;

/** A head's latest split: waiting for its members' reports, or confirmed by them. */
interface HeldPlan {
  sessionId: string;
  head: ConnectedNode;
  members: ClusterPlan["members"];
  confirmed: boolean;
  timer: NodeJS.Timeout;
}

/** The clusters formed here: each head's latest formation, and the formations waiting for their workers. */
export class Clusters {
  /** cluster sessions waiting for their workers' `tunnel.ready` */
  private readonly waiting = new Map<string, { ready(nodeId: string): void }>();
  /** each head's latest formation, and the connection that made it: the only members its split may name */
  private readonly formations = new Map<string, { formation: Formation; by: ConnectedNode }>();
  /** each head's latest split, by head */
  private readonly plans = new Map<string, HeldPlan>();
  /** the members' latest verified reports, by session (current formations only), then worker */
  private readonly reports = new Map<string, Map<string, LayerReport & { seq: number }>>();
  /** the order reports arrived in: a report whose signature was checked late does not replace a newer one */
  private seq = 0;

  constructor(
    private readonly fleet: Fleet,
    private readonly confirmWaitMs = CONFIRM_WAIT_MS,
  ) {}

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
    this.forget(head.id);
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

  /**
   * A head announces its layer split: held when `checkPlan` believes it (the reason when not), and
   * the head's split once its members' own reports confirm it. Until then the head takes no split
   * jobs; a split replaces the head's earlier one.
   */
  plan(head: ConnectedNode, members: ClusterPlan["members"], log: FastifyBaseLogger): string | undefined {
    // a formation counts only on the connection that made it, while that node is still a head
    const f = this.formations.get(head.id);
    const formation = f?.by === head && head.role === "head" ? f.formation : undefined;
    const refused = checkPlan(head.id, formation, members, Date.now());
    if (refused || !formation) return refused;
    this.dropPlan(head.id);
    head.cluster = undefined;
    const held: HeldPlan = {
      sessionId: formation.sessionId,
      head,
      members,
      confirmed: false,
      timer: setTimeout(() => {
        const verdict = judgePlan(members, this.reports.get(formation.sessionId) ?? new Map());
        if (this.plans.get(head.id) === held && verdict.state === "waiting")
          log.warn({ head: head.id, missing: verdict.missing }, "cluster split still unconfirmed: members have not reported their layers");
      }, this.confirmWaitMs).unref(),
    };
    this.plans.set(head.id, held);
    const split = members.map((m) => `${m.nodeId.toLowerCase()}:${layers(m)}`);
    log.info({ head: head.id, split }, "cluster split announced; held until its members report their layers");
    this.settle(head.id, log);
    return undefined;
  }

  /**
   * A worker's signed report of the layers a head placed on it (`cluster.layers`): kept when it
   * names the worker's current formation and its node key signed it, then held against that
   * head's split.
   */
  async report(worker: ConnectedNode, r: ClusterLayers, log: FastifyBaseLogger): Promise<void> {
    const seq = ++this.seq;
    const head = r.head.toLowerCase();
    const formation = this.formations.get(head)?.formation;
    const refused = checkReport(worker, r, formation, Date.now());
    if (refused) return void log.warn({ nodeId: worker.id, head, reason: refused }, "layer report refused");
    const message = clusterLayersMessage({ ...r, worker: worker.id });
    const signer = await recoverMessageAddress({ message, signature: r.signature as `0x${string}` }).catch(() => undefined);
    if (signer?.toLowerCase() !== worker.id)
      return void log.warn({ nodeId: worker.id, head }, "layer report refused: not signed by the worker's node key");
    // the formation may have been replaced while the signature was checked
    if (this.formations.get(head)?.formation !== formation) return;
    const session = this.reports.get(r.sessionId) ?? new Map<string, LayerReport & { seq: number }>();
    this.reports.set(r.sessionId, session);
    if ((session.get(worker.id)?.seq ?? 0) > seq) return;
    const { firstLayer, layerCount, contiguous, tensorBytes } = r;
    session.set(worker.id, { firstLayer, layerCount, contiguous, tensorBytes, seq });
    log.info({ nodeId: worker.id, head, layers: seen(r), tensorBytes }, "a worker reported the layers its head placed on it");
    this.settle(head, log);
  }

  /** Holds a head's split against its members' reports: confirms it, or refuses it with the member that disagrees. */
  private settle(headId: string, log: FastifyBaseLogger): void {
    const p = this.plans.get(headId);
    if (!p) return;
    const verdict = judgePlan(p.members, this.reports.get(p.sessionId) ?? new Map());
    if (verdict.state === "waiting") return;
    if (verdict.state === "refused") {
      const { member, claimed, observed } = verdict;
      log.warn({ head: headId, member, claimed, observed }, "cluster split refused: a member's own report differs");
      this.dropPlan(headId);
      if (p.head.cluster) {
        p.head.cluster = undefined;
        this.fleet.notify();
      }
      p.head.send({ type: "error", message: `cluster split refused: ${verdict.reason}` });
      return;
    }
    if (p.confirmed) return;
    p.confirmed = true;
    clearTimeout(p.timer);
    p.head.cluster = verdict.members;
    log.info(
      { head: headId, split: verdict.members.map((m) => `${m.nodeId}:${layers(m)}`) },
      "cluster split confirmed by its members' own reports",
    );
    this.fleet.notify();
  }

  private dropPlan(headId: string): void {
    clearTimeout(this.plans.get(headId)?.timer);
    this.plans.delete(headId);
  }

  /**
   * A worker gave its work up (its owner needs the machine): every head whose split runs on it
   * loses that split (no jobs until it announces a new one, formed without the worker) and hands
   * its jobs in flight off, as they cannot go on.
   */
  withdraw(workerId: string, reason: AvailabilityReason, log: FastifyBaseLogger): void {
    for (const [headId, p] of this.plans) if (p.members.some((m) => m.nodeId.toLowerCase() === workerId)) this.dropPlan(headId);
    for (const head of this.fleet.list()) {
      if (!head.cluster?.some((m) => m.nodeId === workerId)) continue;
      log.info({ head: head.id, worker: workerId, reason }, "a cluster member yielded to its owner; the head re-forms without it");
      head.cluster = undefined;
      head.handOff(reason);
    }
  }

  /** A head went away (or forms anew): its formation ends with it, and its split and the reports against it. */
  forget(headId: string): void {
    const f = this.formations.get(headId);
    if (f) this.reports.delete(f.formation.sessionId);
    this.formations.delete(headId);
    this.dropPlan(headId);
  }
}
