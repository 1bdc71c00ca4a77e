/**
 * The live fleet: nodes connected over the control channel, the jobs each is
 * running, and the routing of their frames back to whoever waits for them.
 * Choosing a node is a pure function over a snapshot (`pickNode`).
 */
import type { Heartbeat, JobErrorFrame, JobStart, ServedModel, Usage } from "@sharedllm/protocol";

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
}

/** How deep a node's queue may grow beyond its slots before the fleet reports no capacity. */
export const QUEUE_FACTOR = 8;

/**
 * Picks the node for a job: it must accept jobs, serve the model and have queue room; among
 * those the least loaded per slot wins (ties: most slots, then id, so the choice
 * is deterministic). Nodes cooling off after an engine failure are used only when
 * no other node can take the job.
 */
export function pickNode(
  nodes: Iterable<NodeView>,
  model: string,
  now: number,
  exclude: ReadonlySet<string> = new Set(),
): NodeView | undefined {
  let best: NodeView | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  for (const n of nodes) {
    if (exclude.has(n.id) || !n.accepting || !n.models.has(model) || n.active >= n.slots * QUEUE_FACTOR) continue;
    // cooling nodes rank after every healthy one (load per slot stays below QUEUE_FACTOR)
    const rank = n.active / n.slots + (n.coolingUntil > now ? QUEUE_FACTOR : 0);
    if (rank < bestRank || (rank === bestRank && best && (n.slots > best.slots || (n.slots === best.slots && n.id < best.id)))) {
      best = n;
      bestRank = rank;
    }
  }
  return best;
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

export interface ConnectedNode extends NodeView {
  engine: string;
  /** last heartbeat (or hello), ms epoch */
  lastSeenAt: number;
  heartbeat?: Heartbeat;
  /** closes the node's control channel */
  disconnect(reason: string): void;
  send(frame: JobStart | { type: "job.cancel"; jobId: string }): void;
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

  /** Adds a node; a node that reconnects under the same id replaces its old session. */
  add(node: ConnectedNode): void {
    if (this.nodes.has(node.id)) this.remove(node.id, "node reconnected");
    this.nodes.set(node.id, node);
  }

  /** Removes a node and fails its jobs: retryable only where nothing reached the client yet is the caller's call. */
  remove(id: string, reason: string): void {
    const node = this.nodes.get(id);
    if (!node) return;
    this.nodes.delete(id);
    for (const [jobId, sink] of node.jobs) {
      this.jobNode.delete(jobId);
      sink.error({ message: `the node serving this request went away (${reason})`, retryable: true });
    }
    node.jobs.clear();
  }

  servesModel(model: string): boolean {
    for (const n of this.nodes.values()) if (n.models.has(model)) return true;
    return false;
  }

  pick(model: string, exclude?: ReadonlySet<string>): ConnectedNode | undefined {
    return pickNode(this.nodes.values(), model, Date.now(), exclude) as ConnectedNode | undefined;
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
