/**
 * The live fleet: nodes connected over the control channel, the jobs each is
 * running, and the routing of their frames back to whoever waits for them.
 * Choosing a node is a pure function over a snapshot (`pickNode`).
 */
import type {
  Capabilities,
  ClusterPlan,
  CoordinatorFrame,
  Heartbeat,
  JobErrorFrame,
  JobStart,
  ServedModel,
  Usage,
} from "@sharedllm/protocol";
import type { KnownModel } from "./catalogue.js";

/** Receives what a node reports for one job. Exactly one of end/result/error is called, once. */
export interface JobSink {
  chunk(data: string): void;
  end(usage: Usage): void;
  result(body: Record<string, unknown>): void;
  error(e: Pick<JobErrorFrame, "message" | "retryable" | "status">): void;
}

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
}

/** Extra say over where a job may run (site-only keys, federation); default: anywhere. */
export type SchedulingPolicy = (job: { model: string; apiKeyId: string }, node: NodeView) => boolean;

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
    if (exclude.has(n.id) || !n.accepting || !n.models.has(model) || n.active >= n.slots * QUEUE_FACTOR || !allow(n)) continue;
    // a penalty of QUEUE_FACTOR puts a node after every fully usable one (load per slot stays below it)
    let rank = n.active / n.slots;
    if (n.coolingUntil > now) rank += QUEUE_FACTOR;
    if (n.notLoaded?.has(model)) rank += QUEUE_FACTOR;
    if (rank < bestRank || (rank === bestRank && best && better(n, best))) {
      best = n;
      bestRank = rank;
    }
  }
  return best;
}

function better(a: NodeView, b: NodeView): boolean {
  if (a.tokensPerSecond !== b.tokensPerSecond) return a.tokensPerSecond > b.tokensPerSecond;
  if (a.slots !== b.slots) return a.slots > b.slots;
  return a.order < b.order;
}

/** Nodes that have been silent for `missed` heartbeat periods: a pure decision over a snapshot. */
export function silentNodes<T extends { id: string; lastSeenAt: number }>(
  nodes: Iterable<T>,
  now: number,
  intervalMs: number,
  missed: number,
): T[] {
  const out: T[] = [];
  for (const n of nodes) if (now - n.lastSeenAt > intervalMs * missed) out.push(n);
  return out;
}

/**
 * The node to ask to load a model in demand: idle (nothing in flight), taking jobs,
 * not loading anything already, with free memory for twice the model file; among
 * those the one with the most free memory.
 */
export function pickLoader<T extends NodeView & { loading?: string; heartbeat?: Heartbeat }>(
  nodes: Iterable<T>,
  model: KnownModel,
): T | undefined {
  let best: T | undefined;
  for (const n of nodes) {
    if (!n.accepting || n.active > 0 || n.loading || n.models.has(model.id)) continue;
    const free = n.heartbeat?.freeMemoryBytes ?? 0;
    if (free < 2 * (model.sizeBytes ?? 0)) continue;
    if (!best || free > (best.heartbeat?.freeMemoryBytes ?? 0)) best = n;
  }
  return best;
}

export interface ConnectedNode extends NodeView {
  /** the model the node was asked to load, until it reports its models again */
  loading?: string;
  engine: string;
  /** last heartbeat (or hello), ms epoch */
  lastSeenAt: number;
  capabilities?: Capabilities;
  heartbeat?: Heartbeat;
  role: "solo" | "worker" | "head";
  /** a worker's tunnel, at the address its control channel comes from */
  tunnel?: { host: string; port: number; tls: boolean; speed: number };
  /** a head's current layer split over its workers */
  cluster?: ClusterPlan["members"];
  /** closes the node's control channel */
  disconnect(reason: string): void;
  send(frame: CoordinatorFrame): void;
  jobs: Map<string, JobSink>;
  connectedAt: number;
}

const COOL_OFF_MS = 2_000;

export class Fleet {
  private readonly nodes = new Map<string, ConnectedNode>();
  /** jobId -> node id, for routing frames */
  private readonly jobNode = new Map<string, string>();

  get size(): number {
    return this.nodes.size;
  }

  list(): ConnectedNode[] {
    return [...this.nodes.values()];
  }

  get(id: string): ConnectedNode | undefined {
    return this.nodes.get(id);
  }

  /** model id -> the nodes serving it: scheduling scans only those, and "is it served?" costs no scan */
  private readonly servedBy = new Map<string, Set<ConnectedNode>>();
  private connections = 0;

  private index(node: ConnectedNode, add: boolean): void {
    for (const m of node.models.keys()) {
      const set = this.servedBy.get(m) ?? new Set();
      if (add) set.add(node);
      else set.delete(node);
      if (set.size) this.servedBy.set(m, set);
      else this.servedBy.delete(m);
    }
  }

  /** Adds a node; a node that reconnects under the same id replaces its old session. */
  add(node: ConnectedNode): void {
    if (this.nodes.has(node.id)) this.remove(node.id, "node reconnected");
    node.order = ++this.connections;
    this.nodes.set(node.id, node);
    this.index(node, true);
  }

  /** A node's served models changed (it loaded one on request). */
  setModels(node: ConnectedNode, models: ReadonlyMap<string, ServedModel>): void {
    const live = this.nodes.get(node.id) === node;
    if (live) this.index(node, false);
    node.models = models;
    node.loading = undefined;
    if (live) this.index(node, true);
  }

  /** Removes a node and fails its jobs: retryable only where nothing reached the client yet is the caller's call. */
  remove(id: string, reason: string): void {
    const node = this.nodes.get(id);
    if (!node) return;
    this.nodes.delete(id);
    this.index(node, false);
    for (const [jobId, sink] of node.jobs) {
      this.jobNode.delete(jobId);
      sink.error({ message: `the node serving this request went away (${reason})`, retryable: true });
    }
    node.jobs.clear();
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
    return this.servedBy.has(model);
  }

  pick(model: string, exclude?: ReadonlySet<string>, allow?: (n: NodeView) => boolean): ConnectedNode | undefined {
    const candidates = this.servedBy.get(model);
    return candidates && (pickNode(candidates, model, Date.now(), exclude, allow) as ConnectedNode | undefined);
  }

  dispatch(node: ConnectedNode, job: JobStart, sink: JobSink): void {
    node.jobs.set(job.jobId, sink);
    node.active = node.jobs.size;
    this.jobNode.set(job.jobId, node.id);
    node.send(job);
  }

  /** Tells the node to stop a job whose client went away; its sink hears nothing more. */
  cancel(jobId: string): void {
    this.take(jobId)?.node.send({ type: "job.cancel", jobId });
  }

  chunk(nodeId: string, jobId: string, data: string): void {
    this.nodes.get(nodeId)?.jobs.get(jobId)?.chunk(data);
  }

  end(nodeId: string, jobId: string, usage: Usage): void {
    this.take(jobId, nodeId)?.sink.end(usage);
  }

  result(nodeId: string, jobId: string, body: Record<string, unknown>): void {
    this.take(jobId, nodeId)?.sink.result(body);
  }

  error(nodeId: string, jobId: string, e: Pick<JobErrorFrame, "message" | "retryable" | "status">): void {
    const taken = this.take(jobId, nodeId);
    // an engine failure (not a bad request) sends the next jobs elsewhere for a while
    if (taken && e.status === undefined) taken.node.coolingUntil = Date.now() + COOL_OFF_MS;
    taken?.sink.error(e);
  }

  /** Detaches a job from its node; returns the node and the job's sink if the job is still known. */
  private take(jobId: string, nodeId?: string): { node: ConnectedNode; sink: JobSink } | undefined {
    const owner = this.jobNode.get(jobId);
    if (!owner || (nodeId && owner !== nodeId)) return undefined;
    this.jobNode.delete(jobId);
    const node = this.nodes.get(owner);
    const sink = node?.jobs.get(jobId);
    if (!node || !sink) return undefined;
    node.jobs.delete(jobId);
    node.active = node.jobs.size;
    return { node, sink };
  }
}
