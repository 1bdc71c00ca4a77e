/**
 * Replicas of one coordinator on one PostgreSQL database and one NATS server
 * (docs/replicas.md). A node's control channel ends at one replica; every replica schedules
 * over the whole site's fleet:
 * - each replica publishes the nodes it holds on the fleet subject: all of them each heartbeat
 *   period, and every 200 ms those whose state changed, or that left;
 * - the others keep them as RemoteNodes; a replica says it is alive every second, and one not
 *   heard from for five is gone, and so are its nodes (their jobs from here continue elsewhere);
 * - a job for a node another replica holds is a NATS request on that node's subject; the holder
 *   dispatches it to the node and streams its events back on the asking replica's stream subject,
 *   batched per turn of the event loop; a cancel (the client left) goes the same way;
 * - a frame for such a node (a receipt to sign) is published on its subject too.
 */

import { connect, type Msg, type NatsConnection, RequestError, type Subscription } from "@nats-io/transport-node";
import { type JobStart, type ReceiptRequest, receiptRequestSchema, type Usage } from "@sharedllm/protocol";
import type { Logger } from "pino";
import type { KnownModel } from "../catalogue.js";
import type { Fleet } from "../fleet.js";
import { networkNode } from "../plugins/network.js";
import type { ConnectedNode, FailureCause, JobSink } from "../units.js";
import { RemoteNode, type ReplicaLink } from "./remoteNode.js";
import {
  decodeStream,
  encodeStreamChunk,
  encodeStreamEvent,
  type FleetUpdate,
  fleetUpdateSchema,
  type JobReply,
  jobCancelSchema,
  jobRequestSchema,
  REPLICA_WIRE_VERSION,
  type RemoteState,
  type ReplicaSubjects,
  replicaSubjects,
  type StreamTarget,
} from "./wire.js";

/** How often changes of this replica's nodes are told. */
const CHANGES_EVERY_MS = 200;
/** A replica says it is alive at least this often (an empty update when nothing changed)... */
const ALIVE_EVERY_MS = 1_000;
/** ...and one silent this long is gone: its nodes are dropped, the jobs on them continue elsewhere. */
const SILENT_MS = 5_000;
/** How long a replica has to take a job for one of its nodes. */
const HANDOVER_TIMEOUT_MS = 5_000;
/**
 * A replica running other replicas' jobs on its nodes lists them to each every 2 s; a job its
 * holder has not listed for 6 s is lost (its start, events or end went missing, as across a NATS
 * restart, or its holder restarted) and fails here like a lost node's: it is tried again or
 * continued elsewhere.
 */
const LIST_EVERY_MS = 2_000;
const UNLISTED_MS = 6_000;
/** Nodes per fleet message (a message stays well under NATS's 1 MiB default payload limit). */
const NODES_PER_MESSAGE = 200;

export interface ReplicaOptions {
  natsUrl: string;
  /** this replica's id (its lease's) */
  id: string;
  /** the site's join token: the subjects' prefix is derived from it */
  joinToken: string;
  fleet: Fleet;
  /** models served anywhere become known here too (404 vs 503), as the holder recorded them */
  knownModels: Map<string, KnownModel>;
  heartbeatIntervalMs: number;
  log: Logger;
}

export class Replicas implements ReplicaLink, StreamTarget {
  private readonly subjects: ReplicaSubjects;
  /** jobs of this replica running on other replicas' nodes */
  private readonly routes = new Map<string, RemoteNode>();
  /** when each of those was last known to run there (dispatched, or listed by its holder) */
  private readonly listed = new Map<string, number>();
  /** jobs other replicas run on this replica's nodes: to cancel, and to stop when their replica goes */
  private readonly served = new Map<string, { node: ConnectedNode; replica: string }>();
  /** this replica's nodes as last told: id -> what decides whether to tell again */
  private readonly told = new Map<string, string>();
  private readonly nodeSubs = new Map<string, Subscription>();
  /** other replicas: when each was last heard */
  private readonly heard = new Map<string, number>();
  /** stream lines waiting for the end of this turn, by the replica they go to */
  private readonly outbox = new Map<string, string[]>();
  private flushing = false;
  private draining = false;
  /** when this replica last published on the fleet subject */
  private lastTold = 0;
  private readonly timers: NodeJS.Timeout[] = [];

  private constructor(
    private readonly nc: NatsConnection,
    private readonly o: ReplicaOptions,
  ) {
    this.subjects = replicaSubjects(o.joinToken);
  }

  /** Connects to NATS and joins the site's replicas; throws with a clear message when NATS does not answer. */
  static async join(o: ReplicaOptions): Promise<Replicas> {
    let nc: NatsConnection;
    try {
      nc = await connect({ servers: o.natsUrl, name: `sharedllm-coordinator-${o.id}`, noEcho: true, maxReconnectAttempts: -1 });
    } catch (err) {
      throw new Error(`NATS at ${o.natsUrl} does not answer (${(err as Error).message}): replicas need it (--nats-url)`);
    }
    const r = new Replicas(nc, o);
    r.start();
    return r;
  }

  private start(): void {
    const { nc, subjects, o } = this;
    nc.subscribe(subjects.fleet, { callback: (err, msg) => void (err || this.onFleet(msg)) });
    nc.subscribe(subjects.sync, { callback: (err) => void (err || this.tellAll()) });
    nc.subscribe(subjects.stream(o.id), {
      callback: (err, msg) => {
        if (err) return;
        const bad = decodeStream(msg.string(), this);
        if (bad) o.log.warn({ bad }, "a replica sent stream lines this one cannot read");
      },
    });
    this.timers.push(
      setInterval(() => this.tellChanges(), CHANGES_EVERY_MS),
      setInterval(() => {
        if (Date.now() - this.lastTold >= ALIVE_EVERY_MS) this.publishFleet([], []);
        this.sweep();
      }, ALIVE_EVERY_MS),
      setInterval(() => this.tellAll(), o.heartbeatIntervalMs),
      setInterval(() => {
        this.listServed();
        this.failUnlisted();
      }, LIST_EVERY_MS),
    );
    for (const t of this.timers) t.unref();
    void this.watchConnection();
    this.tellAll();
    nc.publish(subjects.sync);
  }

  private async watchConnection(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "disconnect") this.o.log.warn("lost NATS: jobs on other replicas' nodes wait for it to come back");
      if (s.type === "reconnect") {
        this.o.log.info("NATS is back");
        this.tellAll();
        this.nc.publish(this.subjects.sync);
      }
    }
  }

  /** Other replicas' jobs running on this replica's nodes now. */
  get serving(): number {
    return this.served.size;
  }

  /** Stops offering this replica's nodes to the others (it is draining); jobs in flight carry on. */
  drain(): void {
    this.draining = true;
    this.tellChanges();
  }

  /**
   * Leaves: the events of jobs that ended as this replica's nodes were let go are sent, the others
   * are told it has gone, and the connection is drained.
   */
  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    for (const node of this.routes.values()) node.failJobs("this replica is stopping");
    this.flush();
    const update: FleetUpdate = { v: REPLICA_WIRE_VERSION, replica: this.o.id, nodes: [], gone: [...this.told.keys()], bye: true };
    this.nc.publish(this.subjects.fleet, JSON.stringify(update));
    await this.nc.drain().catch(() => undefined);
  }

  // ---- this replica's nodes, told to the others ----

  private state(n: ConnectedNode): RemoteState {
    return {
      id: n.id,
      models: [...n.models.values()],
      slots: n.slots,
      active: n.active,
      accepting: n.accepting && !this.draining,
      coolingUntil: n.coolingUntil,
      notLoaded: n.notLoaded && [...n.notLoaded],
      tokensPerSecond: n.tokensPerSecond,
      suspicion: n.suspicion,
      incarnation: n.incarnation,
      payees: n.payees(),
      network: networkNode(n, this.o.fleet),
    };
  }

  /** what decides whether a node's state is told again before the next whole view */
  private signature(n: ConnectedNode): string {
    const models = [...n.models.keys()].join(",");
    const notLoaded = n.notLoaded ? [...n.notLoaded].join(",") : "";
    return `${n.active}|${n.accepting && !this.draining}|${n.coolingUntil}|${n.tokensPerSecond}|${n.suspicion}|${n.incarnation}|${models}|${notLoaded}|${n.unavailableReason}`;
  }

  /** Tells the nodes whose state changed since last told, and those gone; subscribes to the new ones' subjects first. */
  private tellChanges(): void {
    const changed: RemoteState[] = [];
    const here = new Set<string>();
    for (const n of this.o.fleet.list()) {
      here.add(n.id);
      if (!this.nodeSubs.has(n.id)) this.subscribeNode(n.id);
      const sig = this.signature(n);
      if (this.told.get(n.id) === sig) continue;
      this.told.set(n.id, sig);
      changed.push(this.state(n));
    }
    const gone = [...this.told.keys()].filter((id) => !here.has(id));
    for (const id of gone) {
      this.told.delete(id);
      this.nodeSubs.get(id)?.unsubscribe();
      this.nodeSubs.delete(id);
    }
    if (changed.length || gone.length) this.publishFleet(changed, gone);
  }

  /** Tells every node this replica holds (each heartbeat period, and when a replica asks). */
  private tellAll(): void {
    this.tellChanges();
    const all: RemoteState[] = [];
    for (const n of this.o.fleet.list()) all.push(this.state(n));
    this.publishFleet(all, []);
  }

  private publishFleet(nodes: RemoteState[], gone: string[]): void {
    if (this.nc.isClosed()) return;
    this.lastTold = Date.now();
    for (let i = 0; i === 0 || i < nodes.length; i += NODES_PER_MESSAGE) {
      const update: FleetUpdate = {
        v: REPLICA_WIRE_VERSION,
        replica: this.o.id,
        nodes: nodes.slice(i, i + NODES_PER_MESSAGE),
        gone: i === 0 ? gone : [],
      };
      this.nc.publish(this.subjects.fleet, JSON.stringify(update));
    }
  }

  // ---- other replicas' nodes ----

  private onFleet(msg: Msg): void {
    let update: FleetUpdate;
    try {
      update = fleetUpdateSchema.parse(msg.json());
    } catch (err) {
      this.o.log.warn({ reason: (err as Error).message.slice(0, 200) }, "a fleet update this replica cannot read");
      return;
    }
    const { fleet } = this.o;
    const from = update.replica;
    if (from === this.o.id) return;
    if (update.bye) this.heard.delete(from);
    else this.heard.set(from, Date.now());
    for (const s of update.nodes) {
      for (const m of s.models)
        if (!this.o.knownModels.has(m.id)) this.o.knownModels.set(m.id, { id: m.id, sha256: m.sha256, sizeBytes: m.sizeBytes });
      if (fleet.get(s.id)) continue;
      const known = fleet.remoteNode(s.id) as RemoteNode | undefined;
      if (known?.replica === from) {
        if (!known.serves(s.models)) fleet.setRemoteModels(known, new Map(s.models.map((m) => [m.id, m])));
        known.update(s);
      } else fleet.putRemote(new RemoteNode(s, from, this));
    }
    for (const id of update.gone) this.dropNode(id, from, "it left its replica");
    if (update.bye) this.replicaGone(from, "its replica stopped");
    fleet.notify();
  }

  private dropNode(id: string, replica: string, reason: string): void {
    if (this.o.fleet.remoteNode(id)?.replica !== replica) return;
    this.o.fleet.dropRemote(id)?.failJobs(reason);
  }

  /** A replica stopped or went silent: its nodes go, and so do the jobs it asked this one's nodes to run. */
  private replicaGone(replica: string, reason: string): void {
    this.heard.delete(replica);
    for (const n of this.o.fleet.remotes()) if (n.replica === replica) this.dropNode(n.id, replica, reason);
    for (const [jobId, s] of this.served) {
      if (s.replica !== replica) continue;
      this.served.delete(jobId);
      s.node.cancel(jobId);
    }
  }

  private sweep(): void {
    const before = Date.now() - SILENT_MS;
    let changed = false;
    for (const [replica, at] of this.heard) {
      if (at >= before) continue;
      this.o.log.warn({ replica }, "a replica went silent: its nodes are dropped");
      this.replicaGone(replica, "its replica went silent");
      changed = true;
    }
    if (changed) this.o.fleet.notify();
  }

  // ---- jobs from here on other replicas' nodes (ReplicaLink) ----

  dispatch(node: RemoteNode, start: JobStart): void {
    const body = JSON.stringify({ replica: this.o.id, start });
    const max = this.nc.info?.max_payload ?? 1024 * 1024;
    if (body.length > max) {
      queueMicrotask(() =>
        node.error(start.jobId, { message: "the request is too large to hand to another replica", retryable: true, cause: "node_lost" }),
      );
      return;
    }
    this.routes.set(start.jobId, node);
    this.listed.set(start.jobId, Date.now());
    this.o.log.info({ jobId: start.jobId, nodeId: node.id, replica: node.replica }, "job sent to the replica holding its node");
    this.nc.request(this.subjects.node(node.id, "job"), body, { timeout: HANDOVER_TIMEOUT_MS }).then(
      (msg) => {
        const reply = msg.json<JobReply>();
        this.o.log.info({ jobId: start.jobId, reply }, "the node's replica answered");
        if (!reply.ok) node.error(start.jobId, { message: reply.message, retryable: true, cause: "node_lost" });
      },
      (err: Error) => {
        this.o.log.info({ jobId: start.jobId, err: err.message }, "the node's replica did not take the job");
        const gone = err instanceof RequestError && err.isNoResponders();
        node.error(start.jobId, {
          message: gone ? "the node left its replica" : "the replica holding the node did not answer",
          retryable: true,
          cause: "node_lost",
        });
        // an answer that did not come in time: the job may run there all the same (node.cancel
        // would have taken the job from the node before it heard the error: it waited forever)
        if (!gone) this.cancel(node, start.jobId);
      },
    );
  }

  cancel(node: RemoteNode, jobId: string, sent?: { tokens: number; promptTokens: number }): void {
    if (!this.nc.isClosed()) this.nc.publish(this.subjects.node(node.id, "cancel"), JSON.stringify({ jobId, sent }));
  }

  forget(jobId: string): void {
    this.routes.delete(jobId);
    this.listed.delete(jobId);
  }

  /** Tells each replica which of its jobs this one's nodes run now. */
  private listServed(): void {
    const by = new Map<string, string[]>();
    for (const [jobId, s] of this.served) {
      const jobs = by.get(s.replica);
      if (jobs) jobs.push(jobId);
      else by.set(s.replica, [jobId]);
    }
    for (const [replica, jobs] of by) this.queue(replica, encodeStreamEvent({ e: "running", jobs }));
  }

  private failUnlisted(): void {
    const before = Date.now() - UNLISTED_MS;
    for (const [jobId, at] of this.listed) {
      if (at >= before) continue;
      this.routes.get(jobId)?.error(jobId, { message: "the node's replica lost track of this job", retryable: true, cause: "node_lost" });
    }
  }

  /** Sends a receipt to sign to a node another replica holds; false when no replica is known to hold it. */
  sendTo(nodeId: string, frame: ReceiptRequest): boolean {
    if (!this.o.fleet.remoteNode(nodeId) || this.nc.isClosed()) return false;
    this.nc.publish(this.subjects.node(nodeId, "frame"), JSON.stringify(frame));
    return true;
  }

  // ---- StreamTarget: events of this replica's jobs, back from the nodes' replicas ----

  running(jobs: readonly string[]): void {
    const now = Date.now();
    for (const jobId of jobs) if (this.listed.has(jobId)) this.listed.set(jobId, now);
  }

  chunk(jobId: string, data: string, tokens: readonly number[] | number): void {
    this.routes.get(jobId)?.chunk(jobId, data, tokens);
  }

  prompted(jobId: string, promptTokens: number): void {
    this.routes.get(jobId)?.prompted(jobId, promptTokens);
  }

  end(jobId: string, usage: Usage, resumed?: number): void {
    this.routes.get(jobId)?.end(jobId, usage, resumed);
  }

  error(jobId: string, e: { message: string; retryable: boolean; status?: number; cause?: FailureCause }): void {
    this.routes.get(jobId)?.error(jobId, e);
  }

  // ---- other replicas' jobs on this replica's nodes ----

  private subscribeNode(nodeId: string): void {
    const sub = this.nc.subscribe(this.subjects.nodeAll(nodeId), {
      callback: (err, msg) => {
        if (err) return;
        try {
          this.onNodeMessage(nodeId, msg);
        } catch (e) {
          this.o.log.warn({ err: e, nodeId }, "a replica's message for a node here could not be handled");
        }
      },
    });
    this.nodeSubs.set(nodeId, sub);
  }

  private onNodeMessage(nodeId: string, msg: Msg): void {
    const verb = msg.subject.slice(msg.subject.lastIndexOf(".") + 1);
    const node = this.o.fleet.get(nodeId);
    if (verb === "job") {
      const parsed = jobRequestSchema.safeParse(msg.json());
      const refuse = (message: string) => msg.respond(JSON.stringify({ ok: false, message } satisfies JobReply));
      if (!parsed.success) return void refuse("a job this replica cannot read");
      if (!node) return void refuse("the node left this replica");
      if (!node.accepting || this.draining) return void refuse("the node takes no jobs now");
      const { replica, start } = parsed.data;
      this.o.log.info({ jobId: start.jobId, nodeId, replica }, "job from another replica");
      this.served.set(start.jobId, { node, replica });
      node.dispatch(start, this.sinkFor(replica, start.jobId));
      msg.respond(JSON.stringify({ ok: true } satisfies JobReply));
      return;
    }
    if (verb === "cancel") {
      const parsed = jobCancelSchema.safeParse(msg.json());
      if (!parsed.success) return;
      const s = this.served.get(parsed.data.jobId);
      if (!s) return;
      this.served.delete(parsed.data.jobId);
      s.node.cancel(parsed.data.jobId);
      return;
    }
    // a receipt to sign: the node checks it against what it served
    if (verb === "frame" && node) {
      const parsed = receiptRequestSchema.safeParse(msg.json());
      if (parsed.success) node.send(parsed.data);
    }
  }

  /** Where a node's events for another replica's job go: that replica's stream subject. */
  private sinkFor(replica: string, jobId: string): JobSink {
    const done = () => this.served.delete(jobId);
    return {
      chunk: (data, tokens) => this.queue(replica, encodeStreamChunk(jobId, data, tokens)),
      prompted: (n) => this.queue(replica, encodeStreamEvent({ e: "prompt", j: jobId, n })),
      end: (usage, resumed) => {
        done();
        this.queue(replica, encodeStreamEvent({ e: "end", j: jobId, usage, resumed }));
      },
      error: (e) => {
        done();
        const { message, retryable, status, cause } = e;
        this.queue(replica, encodeStreamEvent({ e: "error", j: jobId, message, retryable, status, cause }));
      },
    };
  }

  private queue(replica: string, line: string): void {
    const lines = this.outbox.get(replica);
    if (lines) lines.push(line);
    else this.outbox.set(replica, [line]);
    if (this.flushing) return;
    this.flushing = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushing = false;
    if (this.nc.isClosed()) {
      this.outbox.clear();
      return;
    }
    // a message stays under half the payload limit: a burst goes in several
    const max = (this.nc.info?.max_payload ?? 1024 * 1024) / 2;
    for (const [replica, lines] of this.outbox) {
      const subject = this.subjects.stream(replica);
      let from = 0;
      let size = 0;
      for (let i = 0; i < lines.length; i++) {
        size += (lines[i] as string).length + 1;
        if (size < max || i === from) continue;
        this.nc.publish(subject, lines.slice(from, i).join("\n"));
        from = i;
        size = (lines[i] as string).length + 1;
      }
      this.nc.publish(subject, from === 0 ? lines.join("\n") : lines.slice(from).join("\n"));
    }
    this.outbox.clear();
  }
}
