/**
 * A node another replica holds, as this replica schedules it (docs/replicas.md): its state as
 * that replica last told it, its jobs from here, and their events as they come back. Like a
 * ConnectedNode, each job hears exactly one of end/error, once.
 */
import type { JobStart, NetworkNode, ServedModel, Usage } from "@sharedllm/protocol";
import type { FailureCause, JobSink, Payees, RemoteUnit } from "../units.js";
import type { RemoteState } from "./wire.js";

/** How a remote node's jobs reach its replica. */
export interface ReplicaLink {
  dispatch(node: RemoteNode, start: JobStart): void;
  cancel(node: RemoteNode, jobId: string, sent?: { tokens: number; promptTokens: number }): void;
  /** the job no longer runs on `node`: its events are not routed any more */
  forget(jobId: string): void;
}

export class RemoteNode implements RemoteUnit {
  readonly id: string;
  models: ReadonlyMap<string, ServedModel> = new Map();
  slots = 1;
  accepting = false;
  coolingUntil = 0;
  notLoaded: ReadonlySet<string> | undefined = undefined;
  order = 0;
  tokensPerSecond = 0;
  suspicion = 0;
  incarnation = 0;
  network!: NetworkNode;
  /** the jobs its replica counts, and those sent from here since it last told */
  private reported = 0;
  private sentSince = 0;
  private paid: Payees = { members: [] };
  private readonly jobs = new Map<string, JobSink>();
  rankChanged: () => void = () => {};

  constructor(
    state: RemoteState,
    readonly replica: string,
    private readonly link: ReplicaLink,
  ) {
    this.id = state.id;
    this.models = new Map(state.models.map((m) => [m.id, m]));
    this.update(state);
  }

  get active(): number {
    return this.reported + this.sentSince;
  }

  /** Whether it serves just these models (else the fleet is told: Fleet.setRemoteModels). */
  serves(models: RemoteState["models"]): boolean {
    return models.length === this.models.size && models.every((m) => this.models.get(m.id)?.sha256 === m.sha256);
  }

  /** Its replica told its state again (its models apart). */
  update(s: RemoteState): void {
    this.slots = s.slots;
    this.reported = s.active;
    this.sentSince = 0;
    this.accepting = s.accepting;
    this.coolingUntil = s.coolingUntil;
    this.notLoaded = s.notLoaded?.length ? new Set(s.notLoaded) : undefined;
    this.tokensPerSecond = s.tokensPerSecond;
    this.suspicion = s.suspicion;
    this.incarnation = s.incarnation;
    this.paid = s.payees as Payees;
    this.network = s.network;
    this.rankChanged();
  }

  dispatch(job: JobStart, sink: JobSink): void {
    this.jobs.set(job.jobId, sink);
    this.sentSince++;
    this.rankChanged();
    this.link.dispatch(this, job);
  }

  cancel(jobId: string, sent?: { tokens: number; promptTokens: number }): void {
    if (this.take(jobId)) this.link.cancel(this, jobId, sent);
  }

  payees(): Payees {
    return this.paid;
  }

  chunk(jobId: string, data: string, tokens: readonly number[] | number): void {
    this.jobs.get(jobId)?.chunk(data, tokens);
  }

  prompted(jobId: string, promptTokens: number): void {
    this.jobs.get(jobId)?.prompted?.(promptTokens);
  }

  end(jobId: string, usage: Usage, resumed?: number): void {
    this.take(jobId)?.end(usage, resumed);
  }

  error(jobId: string, e: { message: string; retryable: boolean; status?: number; cause?: FailureCause }): void {
    this.take(jobId)?.error(e);
  }

  failJobs(reason: string): void {
    for (const jobId of [...this.jobs.keys()]) {
      this.error(jobId, { message: `the node serving this request went away (${reason})`, retryable: true, cause: "node_lost" });
    }
  }

  private take(jobId: string): JobSink | undefined {
    const sink = this.jobs.get(jobId);
    if (!sink) return undefined;
    this.jobs.delete(jobId);
    this.link.forget(jobId);
    return sink;
  }
}
