/**
 * The live fleet: the serving units connected now (nodes on their control channels, see
 * units.ts), which models each serves, and a change event for whoever waits for one (a request
 * waiting for a model to load). Choosing a unit is a pure function over a snapshot (`pickNode`);
 * the fleet keeps each model's nodes in pickNode's order (loadOrder.ts) so that it need not scan.
 * With replicas (docs/replicas.md) it also holds the nodes other replicas hold (`RemoteUnit`):
 * jobs are scheduled over both, while what needs a node's own channel (loading a model, audits,
 * clusters) uses this replica's nodes only (`list`, `get`).
 */
import type { Heartbeat, ServedModel } from "@sharedllm/protocol";
import type { KnownModel } from "./catalogue.js";
import { LoadOrder } from "./loadOrder.js";
import type { ConnectedNode, RemoteUnit } from "./units.js";

export interface NodeView {
  id: string;
  models: ReadonlyMap<string, ServedModel>;
  slots: number;
  /** jobs dispatched and not yet finished */
  active: number;
  /** until when the node is skipped after an engine failure (ms epoch) */
  coolingUntil: number;
  /** false while the node is paused, outside its schedule, or draining */
  accepting: boolean;
  /** served models whose engine is not ready now (from heartbeats); undefined when all are ready */
  notLoaded?: ReadonlySet<string>;
  /** deterministic last tie-break: lower first (the fleet numbers nodes as they connect) */
  order: number;
  /** recent or measured decode speed, tokens/s (0 when unknown) */
  tokensPerSecond: number;
  /** failed audits not cleared (docs/verification.md): each weighs like a full load */
  suspicion?: number;
}

/** Extra say over where a job may run (site-only keys, federation); default: anywhere. */
export type SchedulingPolicy = (job: { model: string; apiKeyId: string }, node: NodeView) => boolean;

/** Models whose last node left that the fleet remembers (the latest). */
const MAX_UNSERVED = 1024;

/** How deep a node's queue may grow beyond its slots before the fleet reports no capacity. */
export const QUEUE_FACTOR = 8;

/**
 * Picks the node for a job. It must accept jobs, serve the model, pass the policy
 * and have queue room. Among those, the least outstanding work per slot wins;
 * ties go to the faster node (measured tokens/s), then more slots, then the node
 * connected first, so the choice is deterministic. Nodes whose engine does not have the
 * model loaded (restarting) or that are cooling off after a failure are used only
 * when no other node can take the job.
 */
export function pickNode(
  nodes: Iterable<NodeView>,
  model: string,
  now: number,
  exclude: ReadonlySet<string> = new Set(),
  allow: (n: NodeView) => boolean = () => true,
): NodeView | undefined {
  let best: NodeView | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  for (const n of nodes) {
    if (!eligible(n, model, exclude) || !allow(n)) continue;
    const rank = rankOf(n, model, now);
    if (rank < bestRank || (rank === bestRank && best && better(n, best))) {
      best = n;
      bestRank = rank;
    }
  }
  return best;
}

/** Whether a node may take a job of `model` at all: it accepts jobs, serves the model, has queue room and is not excluded. */
export function eligible(n: NodeView, model: string, exclude: ReadonlySet<string> | undefined): boolean {
  return !exclude?.has(n.id) && n.accepting && n.models.has(model) && n.active < n.slots * QUEUE_FACTOR;
}

/**
 * A node's rank for a job of `model`, lower first: its outstanding work per slot, its suspicion,
 * and a penalty of QUEUE_FACTOR (which puts it after every fully usable node: load per slot stays
 * below it) while it cools off after a failure and while its engine does not have the model loaded.
 */
export function rankOf(n: NodeView, model: string, now: number): number {
  let rank = n.active / n.slots + (n.suspicion ?? 0);
  if (n.coolingUntil > now) rank += QUEUE_FACTOR;
  if (n.notLoaded?.has(model)) rank += QUEUE_FACTOR;
  return rank;
}

function better(a: NodeView, b: NodeView): boolean {
  if (a.tokensPerSecond !== b.tokensPerSecond) return a.tokensPerSecond > b.tokensPerSecond;
  if (a.slots !== b.slots) return a.slots > b.slots;
  return a.order < b.order;
}

/** where other replicas' nodes are numbered from, in tie-break order (NodeView.order) */
const REMOTE_ORDER = 2 ** 40;

/** How often, per heartbeat period, the coordinator looks for silent nodes. */
export const SWEEPS_PER_HEARTBEAT = 5;

/**
 * When silent nodes are looked for, and how long a silence counts as offline: `missed` heartbeat
 * periods less one sweep. A node is taken off at the first sweep after that, so no later than
 * `missed` periods after its last heartbeat (15 s at 5 s heartbeats, whatever the sweep's phase)
 * and no sooner than `missed` periods less one sweep. Sweeping only once a period would let a
 * node stay up to one more period.
 */
export function sweepSchedule(intervalMs: number, missed: number): { everyMs: number; silentMs: number } {
  const everyMs = intervalMs / SWEEPS_PER_HEARTBEAT;
  return { everyMs, silentMs: intervalMs * missed - everyMs };
}

/** Nodes that have been silent for longer than `silentMs`: a pure decision over a snapshot. */
export function silentNodes<T extends { id: string; lastSeenAt: number }>(nodes: Iterable<T>, now: number, silentMs: number): T[] {
  const out: T[] = [];
  for (const n of nodes) if (now - n.lastSeenAt > silentMs) out.push(n);
  return out;
}

/**
 * The node to ask to load a model in demand: a solo node (a worker serves no models, and a
 * head's split, which decides its pay, is for its own model), idle (nothing in flight), taking
 * jobs, not loading anything already, with free memory for twice the model file; among those the
 * one with the most free memory.
 */
export function pickLoader<T extends NodeView & { role?: string; loading?: string; heartbeat?: Heartbeat }>(
  nodes: Iterable<T>,
  model: KnownModel,
): T | undefined {
  let best: T | undefined;
  for (const n of nodes) {
    if ((n.role ?? "solo") !== "solo" || !n.accepting || n.active > 0 || n.loading || n.models.has(model.id)) continue;
    const free = n.heartbeat?.freeMemoryBytes ?? 0;
    if (free < 2 * (model.sizeBytes ?? 0)) continue;
    if (!best || free > (best.heartbeat?.freeMemoryBytes ?? 0)) best = n;
  }
  return best;
}

export class Fleet {
  private readonly nodes = new Map<string, ConnectedNode>();
  /**
   * model id -> the nodes serving it, in the order they are picked: scheduling walks from the
   * front (a scan of 10,000 nodes took p50 1.4 ms, p99 17 ms in the control-plane bench), and
   * "is it served?" costs no scan
   */
  private readonly servedBy = new Map<string, LoadOrder<ConnectedNode>>();
  private readonly watchers = new Set<() => void>();
  /** the watchers are told of rank changes once the current turn's are in */
  private rankChangesPending = false;
  /** model id -> when its last node left (a node or a replica moving hands it over for a moment) */
  private readonly unservedSince = new Map<string, number>();
  private connections = 0;
  /** the nodes other replicas hold, by id, and by model */
  private readonly remote = new Map<string, RemoteUnit>();
  private readonly remoteServedBy = new Map<string, LoadOrder<RemoteUnit>>();

  /** the nodes this replica holds */
  get size(): number {
    return this.nodes.size;
  }

  /** the nodes this replica holds (their control channels end here) */
  list(): ConnectedNode[] {
    return [...this.nodes.values()];
  }

  get(id: string): ConnectedNode | undefined {
    return this.nodes.get(id);
  }

  /** every node any replica holds: what the site's views show */
  all(): (ConnectedNode | RemoteUnit)[] {
    return [...this.nodes.values(), ...this.remote.values()];
  }

  /** a node another replica holds */
  remoteNode(id: string): RemoteUnit | undefined {
    return this.remote.get(id);
  }

  remotes(): RemoteUnit[] {
    return [...this.remote.values()];
  }

  /**
   * A node another replica holds, newly told (it replaces what was known of that id). Ignored
   * while this replica holds it itself. The caller calls notify() once it has applied an update.
   */
  putRemote(node: RemoteUnit): void {
    if (this.nodes.has(node.id)) return;
    const old = this.remote.get(node.id);
    if (old) this.indexed(this.remoteServedBy, old, false);
    // numbered after every node of this replica's own: where all else ties, a job goes to one of
    // those, which needs no hop over NATS
    node.order = old?.order ?? REMOTE_ORDER + ++this.connections;
    this.remote.set(node.id, node);
    // its rank changes as its replica tells its state, and as jobs are sent to it from here
    node.rankChanged = () => this.rerankIn(this.remoteServedBy, node, this.remote.get(node.id) === node);
    this.indexed(this.remoteServedBy, node, true);
  }

  /** A node another replica holds serves other models now (as setModels for this replica's own). */
  setRemoteModels(node: RemoteUnit, models: ReadonlyMap<string, ServedModel>): void {
    const live = this.remote.get(node.id) === node;
    if (live) this.indexed(this.remoteServedBy, node, false);
    node.models = models;
    if (live) this.indexed(this.remoteServedBy, node, true);
  }

  /** Drops a node another replica held; returns it (its jobs from here are the caller's to fail). */
  dropRemote(id: string): RemoteUnit | undefined {
    const node = this.remote.get(id);
    if (!node) return undefined;
    this.remote.delete(id);
    this.indexed(this.remoteServedBy, node, false);
    node.rankChanged = () => {};
    return node;
  }

  /**
   * Calls `listener` after every change of who is connected or what they serve, at once, and
   * after changes of what they can take (jobs ending, a node taking jobs again), once per turn;
   * returns the unsubscribe.
   */
  watch(listener: () => void): () => void {
    this.watchers.add(listener);
    return () => this.watchers.delete(listener);
  }

  /**
   * Resolves with the first value `check` gives, checked now and after every change of the fleet;
   * with undefined once `timeoutMs` has passed or `signal` aborts.
   */
  until<T>(check: () => T | undefined, timeoutMs: number, signal: AbortSignal): Promise<T | undefined> {
    const now = check();
    if (now !== undefined || signal.aborted) return Promise.resolve(now);
    return new Promise((resolve) => {
      const settle = (value: T | undefined) => {
        clearTimeout(timer);
        unwatch();
        signal.removeEventListener("abort", gone);
        resolve(value);
      };
      const gone = () => settle(undefined);
      const timer = setTimeout(gone, timeoutMs);
      const unwatch = this.watch(() => {
        const value = check();
        if (value !== undefined) settle(value);
      });
      signal.addEventListener("abort", gone, { once: true });
    });
  }

  /** Tells the watchers that a node's say on taking jobs changed (its availability, a head's split). */
  notify(): void {
    this.changed();
  }

  private changed(): void {
    for (const w of [...this.watchers]) w();
  }

  /** Whether the last node serving `model` left less than `ms` ago (none serves it now). */
  leftWithin(model: string, ms: number): boolean {
    const since = this.unservedSince.get(model);
    return since !== undefined && !this.servesModel(model) && Date.now() - since < ms;
  }

  private index(node: ConnectedNode, add: boolean): void {
    this.indexed(this.servedBy, node, add);
  }

  /** Adds a node to (or takes it from) its models' orders, noting when the last node of a model left. */
  private indexed<T extends NodeView>(orders: Map<string, LoadOrder<T>>, node: T, add: boolean): void {
    const now = Date.now();
    for (const m of node.models.keys()) {
      const order = orders.get(m) ?? new LoadOrder<T>(m);
      if (add) order.set(node, now);
      else order.delete(node);
      if (order.size) orders.set(m, order);
      else orders.delete(m);
      if (add) this.unservedSince.delete(m);
      else if (!this.servesModel(m)) {
        this.unservedSince.delete(m);
        this.unservedSince.set(m, now);
        // the oldest go first: nodes naming ever new models add no memory without bound
        if (this.unservedSince.size > MAX_UNSERVED) this.unservedSince.delete(this.unservedSince.keys().next().value as string);
      }
    }
  }

  /**
   * A node's rank changed (its jobs in flight, its speed, its loaded models, its suspicion, a
   * failure's cool-off): it moves to its place among each model's nodes. Every change of those
   * must be told here, by whatever kind of unit it is, or the node is picked by its old rank.
   */
  rerank(node: ConnectedNode): void {
    this.rerankIn(this.servedBy, node, this.nodes.get(node.id) === node);
  }

  private rerankIn<T extends NodeView>(orders: Map<string, LoadOrder<T>>, node: T, live: boolean): void {
    if (!live) return;
    const now = Date.now();
    for (const m of node.models.keys()) orders.get(m)?.set(node, now);
    if (this.watchers.size === 0 || this.rankChangesPending) return;
    this.rankChangesPending = true;
    setImmediate(() => {
      this.rankChangesPending = false;
      this.changed();
    });
  }

  /** Adds a node; a node that reconnects under the same id replaces its old session (here, or at another replica). */
  add(node: ConnectedNode): void {
    const earlier = this.nodes.get(node.id);
    if (earlier) {
      this.remove(node.id, "node reconnected");
      // one channel per node: the earlier one is a dead link the node gave up on, or a second connection
      earlier.disconnect("replaced by a newer connection of this node");
    }
    this.dropRemote(node.id);
    node.order = ++this.connections;
    this.nodes.set(node.id, node);
    node.rankChanged = () => this.rerank(node);
    this.index(node, true);
    this.changed();
  }

  /** A node's served models changed (it loaded one on request, or failed to). */
  setModels(node: ConnectedNode, models: ReadonlyMap<string, ServedModel>): void {
    const live = this.nodes.get(node.id) === node;
    if (live) this.index(node, false);
    node.models = models;
    node.loading = undefined;
    if (live) this.index(node, true);
    this.changed();
  }

  /** Removes a node and fails its jobs: retryable only where nothing reached the client yet is the job's call. */
  remove(id: string, reason: string): void {
    const node = this.nodes.get(id);
    if (!node) return;
    this.nodes.delete(id);
    this.index(node, false);
    node.rankChanged = () => {};
    node.failJobs(reason);
    this.changed();
  }

  /** Asks an idle node with room to pull and serve a model; returns it, or undefined when none can. */
  requestLoad(model: KnownModel): ConnectedNode | undefined {
    if (!model.source) return undefined;
    for (const n of this.nodes.values()) if (n.loading === model.id) return n;
    const node = pickLoader(this.nodes.values(), model);
    if (!node) return undefined;
    node.loading = model.id;
    node.send({ type: "model.load", model: model.id, source: model.source, sha256: model.sha256 });
    return node;
  }

  servesModel(model: string): boolean {
    return this.servedBy.has(model) || this.remoteServedBy.has(model);
  }

  /** Whether a node of any replica serving `model`, taking jobs now or not, passes `allow`. */
  anyServing(model: string, allow: (n: ConnectedNode | RemoteUnit) => boolean): boolean {
    for (const n of this.servedBy.get(model) ?? []) if (allow(n)) return true;
    for (const n of this.remoteServedBy.get(model) ?? []) if (allow(n)) return true;
    return false;
  }

  /** The unit for a job among the nodes of every replica: the first in pick order of each side, then the better of the two. */
  pick(model: string, allow?: (n: ConnectedNode | RemoteUnit) => boolean): ConnectedNode | RemoteUnit | undefined {
    const now = Date.now();
    const here = this.servedBy.get(model)?.first(now, undefined, allow);
    const there = this.remoteServedBy.get(model)?.first(now, undefined, allow);
    if (!here || !there) return here ?? there;
    return pickNode([here, there], model, now) as ConnectedNode | RemoteUnit;
  }
}
