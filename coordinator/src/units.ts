/**
 * Serving units: what a job runs on. A job sees one interface (`ServingUnit`): start a job,
 * stop it, say who earns from it. Today there is one implementation, a node on a control channel
 * (`ConnectedNode`), which is either a solo node (one machine runs the whole model) or a LAN
 * virtual node (a cluster head whose llama-server splits the model's layers over its members'
 * rpc-servers: its jobs pay the members by the layers each served). A federated peer or a browser
 * node is one more implementation of `ServingUnit`.
 */
import type {
  AvailabilityReason,
  Capabilities,
  ConfirmedMember,
  CoordinatorFrame,
  Heartbeat,
  JobErrorFrame,
  JobStart,
  NetworkNode,
  ServedModel,
  Usage,
} from "@sharedllm/protocol";
import type { NodeView } from "./fleet.js";

/**
 * Why a unit failed a job: its node went away, its engine failed, its owner took the machine
 * back, or it stopped sending mid-stream.
 */
export type FailureCause = "node_lost" | "engine" | "owner" | "stalled";

/** Receives what a unit reports for one job: its streamed events, then exactly one of end/error, once. */
export interface JobSink {
  /** one event, with the ids of the tokens it streams (or their count when not all are known) */
  chunk(data: string, tokens: readonly number[] | number): void;
  /** the prompt tokens the unit's engine took, told as its output begins (optional: not every unit tells) */
  prompted?(promptTokens: number): void;
  /** `resumed`: the tokens of earlier output the unit was given again as part of its prompt */
  end(usage: Usage, resumed?: number): void;
  error(e: Pick<JobErrorFrame, "message" | "retryable" | "status"> & { cause?: FailureCause }): void;
}

/** Who earns from a job: node addresses with shares in basis points summing to 10000. */
export interface Payees {
  members: { node: `0x${string}`; shareBps: number }[];
  /** the head that ran the job, when the members served layers of a split model */
  via?: string;
  /**
   * The coordinator itself earns the part: it forwarded the job to a peer site, which charges
   * this coordinator for it (docs/federation.md), so the user's payment is what refills that.
   */
  coordinator?: true;
}

export interface ServingUnit {
  /** named in responses (`x-sharedllm-node`) and in the jobs table */
  readonly id: string;
  readonly models: ReadonlyMap<string, ServedModel>;
  /** Starts a job; `sink` hears its output, then exactly one of end/error. */
  dispatch(job: JobStart, sink: JobSink): void;
  /**
   * Stops a job whose client went away; its sink hears nothing more. `sent`: what the client is
   * charged for (a stream it gave up: the output tokens it was sent, and its prompt); none when it
   * is charged nothing
   */
  cancel(jobId: string, sent?: { tokens: number; promptTokens: number }): void;
  /** who is paid for a job served here now */
  payees(): Payees;
  /**
   * Changes when the unit is no longer the one a job saw fail: a split re-formed. A job tries a
   * unit again only in another incarnation.
   */
  readonly incarnation: number;
}

/**
 * A node another replica of this coordinator holds (docs/replicas.md): scheduled here from that
 * replica's fleet view, its jobs carried there and their streams back over NATS.
 */
export interface RemoteUnit extends NodeView, ServingUnit {
  readonly id: string;
  /** set by the fleet (setRemoteModels), which indexes the unit by them */
  models: ReadonlyMap<string, ServedModel>;
  /** the replica holding its control channel */
  readonly replica: string;
  /** its /v1/network entry, as that replica shows it */
  readonly network: NetworkNode;
  /** fails its jobs in flight from this replica (its replica went away) */
  failJobs(reason: string): void;
  /** told whenever what ranks it changes (the fleet sets it: loadOrder.ts) */
  rankChanged: () => void;
}

/** How long a node is passed over after an engine failure. */
const COOL_OFF_MS = 2_000;

/** What a node says of itself when it connects (its hello, checked). */
export interface NodeInit {
  id: string;
  engine: string;
  models: ReadonlyMap<string, ServedModel>;
  slots: number;
  accepting: boolean;
  /** why it takes no jobs, when it says */
  reason?: AvailabilityReason;
  capabilities?: Capabilities;
  role: "solo" | "worker" | "head";
  tunnel?: { host: string; port: number; tls: boolean; speed: number };
  /** it offers to audit (used only if the coordinator trusts it) */
  auditor?: boolean;
  send(frame: CoordinatorFrame): void;
  /** closes the node's control channel */
  /** `code`: the WebSocket close code (default: refused; 1001: going away, connect again elsewhere) */
  disconnect(reason: string, code?: number): void;
}

/**
 * A node on a control channel: a solo node, or a LAN virtual node once its head has announced a
 * split. Its jobs are routed by id from the channel's frames to their sinks. Every field is set
 * in the constructor: all nodes share one object shape, which keeps scheduling scans fast.
 */
export class ConnectedNode implements NodeView, ServingUnit {
  readonly id: string;
  models: ReadonlyMap<string, ServedModel>;
  slots: number;
  /** jobs dispatched and not yet finished */
  active = 0;
  coolingUntil = 0;
  /** the owner's say: false while paused, outside its schedule, draining, or yielding to its owner */
  available = true;
  /** why the owner's say is no (null while it is yes) */
  unavailableReason: Exclude<AvailabilityReason, "resumed"> | null = null;
  notLoaded: ReadonlySet<string> | undefined = undefined;
  order = 0;
  tokensPerSecond: number;
  /** the model the node was asked to load, until it reports its models again */
  loading: string | undefined = undefined;
  readonly engine: string;
  /** last heartbeat (or hello), ms epoch */
  lastSeenAt = Date.now();
  readonly connectedAt = Date.now();
  capabilities: Capabilities | undefined;
  heartbeat: Heartbeat | undefined = undefined;
  readonly role: "solo" | "worker" | "head";
  /** a worker's tunnel, at the address its control channel comes from */
  readonly tunnel: { host: string; port: number; tls: boolean; speed: number } | undefined;
  /** it offers to audit other nodes' jobs */
  readonly auditor: boolean;
  /** bumped with each new split of a head */
  incarnation = 0;
  /** failed audits not cleared: it gets work after nodes without */
  suspicion = 0;
  /**
   * to call after any change of what ranks it for scheduling (fleet.ts `rankOf`): the fleet sets
   * it while the node is in it (`Fleet.rerank`)
   */
  rankChanged: () => void = () => {};
  private split: ConfirmedMember[] | undefined = undefined;
  readonly jobs = new Map<string, JobSink>();
  readonly send: (frame: CoordinatorFrame) => void;
  readonly disconnect: (reason: string, code?: number) => void;

  constructor(n: NodeInit) {
    this.id = n.id;
    this.models = n.models;
    this.slots = n.slots;
    this.setAvailability(n.accepting, n.reason ?? "resumed");
    this.tokensPerSecond = n.capabilities?.tokensPerSecond ?? 0;
    this.engine = n.engine;
    this.capabilities = n.capabilities;
    this.role = n.role;
    this.tunnel = n.tunnel;
    this.auditor = n.auditor ?? false;
    this.send = n.send;
    this.disconnect = n.disconnect;
  }

  dispatch(job: JobStart, sink: JobSink): void {
    this.jobs.set(job.jobId, sink);
    this.active = this.jobs.size;
    this.rankChanged();
    this.send(job);
  }

  cancel(jobId: string): void {
    if (this.take(jobId)) this.send({ type: "job.cancel", jobId });
  }

  /** a head's current layer split over its workers, confirmed by their own reports: set, the node is a LAN virtual node */
  get cluster(): ConfirmedMember[] | undefined {
    return this.split;
  }

  set cluster(members: ConfirmedMember[] | undefined) {
    this.split = members;
    this.incarnation++;
  }

  /**
   * Whether the node takes jobs: its owner's say, and for a head, a split the coordinator accepted.
   * A head's model runs on its workers; without an accepted split there is no one to pay for that
   * work but the head (docs/security/cluster.md), so it gets no jobs.
   */
  get accepting(): boolean {
    return this.available && (this.role !== "head" || !!this.cluster?.length);
  }

  payees(): Payees {
    // a head whose split was withdrawn mid-job: the work was its workers', not its own
    if (this.role === "head" && !this.cluster?.length) return { members: [] };
    if (!this.cluster?.length) return { members: [{ node: this.id as `0x${string}`, shareBps: 10_000 }] };
    return { members: this.cluster.map((m) => ({ node: m.nodeId as `0x${string}`, shareBps: m.shareBps })), via: this.id };
  }

  /** the hot path: one call per streamed token */
  chunk(jobId: string, data: string, tokens: readonly number[] | number): void {
    this.jobs.get(jobId)?.chunk(data, tokens);
  }

  prompted(jobId: string, promptTokens: number): void {
    this.jobs.get(jobId)?.prompted?.(promptTokens);
  }

  end(jobId: string, usage: Usage, resumed?: number): void {
    this.take(jobId)?.end(usage, resumed);
  }

  error(jobId: string, e: Pick<JobErrorFrame, "message" | "retryable" | "status">): void {
    const sink = this.take(jobId);
    // an engine failure (not a bad request) sends the next jobs elsewhere for a while
    if (sink && e.status === undefined) {
      this.coolingUntil = Date.now() + COOL_OFF_MS;
      this.rankChanged();
    }
    sink?.error({ ...e, cause: "engine" });
  }

  /** Fails every job in flight (the node went away): each is tried again, or continued, elsewhere. */
  failJobs(reason: string): void {
    const sinks = [...this.jobs.values()];
    this.jobs.clear();
    this.active = 0;
    this.rankChanged();
    for (const sink of sinks) {
      sink.error({ message: `the node serving this request went away (${reason})`, retryable: true, cause: "node_lost" });
    }
  }

  /** The owner's say changed: whether the node takes jobs, and why not. */
  setAvailability(accepting: boolean, reason: AvailabilityReason): void {
    this.available = accepting;
    this.unavailableReason = accepting || reason === "resumed" ? null : reason;
  }

  /**
   * The node gave up its jobs in flight (its owner needs the machine): each is stopped there and
   * failed as retryable, so that it can carry on on another unit.
   */
  handOff(reason: AvailabilityReason): void {
    const jobs = [...this.jobs];
    this.jobs.clear();
    this.active = 0;
    this.rankChanged();
    for (const [jobId, sink] of jobs) {
      this.send({ type: "job.cancel", jobId });
      sink.error({ message: `the node's owner needs the machine (${reason})`, retryable: true, cause: "owner" });
    }
  }

  /** Detaches a job; returns its sink if the job is still running here. */
  private take(jobId: string): JobSink | undefined {
    const sink = this.jobs.get(jobId);
    if (!sink) return undefined;
    this.jobs.delete(jobId);
    this.active = this.jobs.size;
    this.rankChanged();
    return sink;
  }
}
