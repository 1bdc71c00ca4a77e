/**
 * One job's life, from its credit hold to its last row: an object with explicit states, each
 * transition in one method and recorded in `history`.
 *
 *   queued -> dispatched -> streaming -> completed | failed | cancelled
 *
 * A job is queued while its credits are held, dispatched once a serving unit has it (again, on
 * another unit, when one fails before any output reached the client: at most MAX_ATTEMPTS), and
 * streaming once output has. `continuing` (a stream carried on by another unit after a failure)
 * has its place in the states and no transition into it yet. The effects (which unit, the
 * credits, the database rows, the client's response) come in as interfaces, so the rules here
 * are tested with fakes (job.test.ts).
 */
import { ApiError, type JobKind, type JobStart, type Usage, usageSchema } from "@sharedllm/protocol";
import type { JobStatus } from "../db/schema.js";
import { meteredUsage, RelayedText, type UsageBounds } from "../ledger/usage.js";
import type { JobSink, Payees, ServingUnit } from "../units.js";

export type JobState = "queued" | "dispatched" | "streaming" | "continuing" | "completed" | "failed" | "cancelled";

/** The states each state may move to; the last three end the job. */
const NEXT: Record<JobState, readonly JobState[]> = {
  queued: ["dispatched", "failed", "cancelled"],
  dispatched: ["dispatched", "streaming", "completed", "failed", "cancelled"],
  streaming: ["continuing", "completed", "failed", "cancelled"],
  continuing: ["streaming", "failed", "cancelled"],
  completed: [],
  failed: [],
  cancelled: [],
};

/** Attempts on different units before a job fails. */
export const MAX_ATTEMPTS = 3;

/** What a job is: the request as the engine gets it, and the bounds of what it may be charged. */
export interface JobSpec {
  start: JobStart;
  model: string;
  apiKeyId: string;
  /** bounds of the metered usage, but the relayed bytes (the job counts those itself) */
  bounds: Omit<UsageBounds, "relayedBytes">;
}

/** The response to the client, told what to write. */
export interface JobOutput {
  /** the first streamed chunk: the response starts here */
  open(unit: string, data: string): void;
  /** every later streamed chunk (the hot path) */
  chunk(data: string): void;
  /** the stream is over, and recorded */
  end(unit: string): void;
  /** a whole (non-streaming) response, its usage metered, recorded */
  result(body: Record<string, unknown>, unit: string): void;
  /** the job failed: before `open`, the client gets this as the HTTP error; after, as the stream's last event */
  fail(err: ApiError): void;
}

/** The credits of a paid job: held before it runs, then charged (with receipts) or released. */
export interface JobCredits {
  hold(): Promise<void>;
  /** charges the usage and proposes receipts to the payees; releases the hold if that fails */
  charge(usage: Usage, payees: Payees, modelSha256: string | undefined): Promise<void>;
  release(): Promise<void>;
}

/** Where the job's rows go (and its metrics). */
export interface JobRecords {
  /** the row of a running job */
  started(job: Job): Promise<void>;
  /** the final row, written before the client hears that the job is done */
  finished(job: Job, status: JobStatus, usage?: Usage, error?: string): Promise<void>;
}

export interface JobEffects {
  /** a unit for the next attempt, none of `tried`; undefined when none can take the job */
  pick(model: string, tried: ReadonlySet<string>): ServingUnit | undefined;
  /** absent for a free key */
  credits?: JobCredits;
  records: JobRecords;
  log: { warn(o: object, msg: string): void; error(o: object, msg: string): void };
}

export class Job implements JobSink {
  state: JobState = "queued";
  /** every transition, in order */
  readonly history: { state: JobState; at: number; unit?: string }[] = [{ state: "queued", at: Date.now() }];
  /** the unit of the latest attempt */
  unit: ServingUnit | undefined;
  /** who is paid for this attempt, and the model file it ran: as they were when it was dispatched */
  private paid: { payees: Payees; modelSha256: string | undefined } | undefined;
  private readonly tried = new Set<string>();
  /** what was relayed to the client bounds what the job is charged */
  private readonly relayed = new RelayedText();
  private readonly streamed: boolean;
  private started: Promise<void> | undefined;

  constructor(
    readonly spec: JobSpec,
    private readonly fx: JobEffects,
    private readonly out: JobOutput,
  ) {
    this.streamed = spec.start.stream;
  }

  get id(): string {
    return this.spec.start.jobId;
  }

  get kind(): JobKind {
    return this.spec.start.kind;
  }

  get done(): boolean {
    return NEXT[this.state].length === 0;
  }

  /** queued: holds the credits (HTTP 402 when short: the job ends without a row), then dispatches. */
  async run(): Promise<void> {
    try {
      await this.fx.credits?.hold();
    } catch (err) {
      if (!this.done) this.to("failed");
      throw err;
    }
    // the client went away while the credits were held
    if (this.state === "cancelled") return void (await this.fx.credits?.release());
    this.dispatch();
  }

  /** -> dispatched: the next attempt, on a unit not tried yet. */
  private dispatch(): void {
    const unit = this.fx.pick(this.spec.model, this.tried);
    if (!unit) {
      const { model } = this.spec;
      this.fail(
        this.tried.size
          ? new ApiError("node_failed", `every node serving "${model}" failed this request; try again shortly`)
          : new ApiError("no_capacity", `no node serving "${model}" has capacity right now; try again shortly`),
      );
      return;
    }
    this.tried.add(unit.id);
    this.unit = unit;
    // a split re-formed or a model swapped mid-job must not change who did this job's work
    this.paid = { payees: unit.payees(), modelSha256: unit.models.get(this.spec.model)?.sha256 };
    this.to("dispatched", unit.id);
    unit.dispatch(this.spec.start, this);
    if (!this.streamed) this.recordStart();
  }

  /** A streamed chunk: the first moves the job to streaming; each is relayed unchanged. */
  chunk(data: string): void {
    // chunks belong to streams; a unit that sends them for a non-streaming job is ignored
    if (!this.streamed) return;
    if (this.state === "streaming") {
      this.relayed.addChunk(data);
      this.out.chunk(data);
      return;
    }
    if (this.state !== "dispatched") return;
    this.to("streaming");
    this.relayed.addChunk(data);
    this.out.open(this.unitId, data);
    this.recordStart();
  }

  /** The stream ended: -> completed, charged and recorded before the client hears it. */
  end(reported: Usage): void {
    if (this.done) return;
    this.to("completed");
    this.settle("completed", this.metered(reported)).then(
      () => this.out.end(this.unitId),
      (err) => this.recordingFailed(err),
    );
  }

  /** A whole response: -> completed, with its usage metered. */
  result(body: Record<string, unknown>): void {
    if (this.done) return;
    // a response whose counts are not whole token numbers is the unit's failure; nothing reached the client
    const reported = usageSchema.safeParse(body.usage);
    if (!reported.success) {
      this.error({ message: "the node reported malformed usage", retryable: true });
      return;
    }
    this.relayed.addBody(body);
    const usage = this.metered(reported.data);
    body.usage = usage;
    this.to("completed");
    this.settle("completed", usage).then(
      () => this.out.result(body, this.unitId),
      (err) => this.recordingFailed(err),
    );
  }

  /** The unit failed the job: another attempt if nothing reached the client and it may be retried, else -> failed. */
  error(e: { message: string; retryable: boolean; status?: number }): void {
    if (this.done) return;
    if (this.state === "dispatched" && e.retryable && this.tried.size < MAX_ATTEMPTS) {
      this.fx.log.warn({ jobId: this.id, nodeId: this.unit?.id, reason: e.message }, "job failed on a node before output; trying another");
      this.dispatch();
      return;
    }
    this.fail(
      e.status !== undefined && e.status < 500
        ? new ApiError("invalid_request", e.message)
        : new ApiError("node_failed", `generation failed on the serving node: ${e.message}`),
    );
  }

  /** The client went away: -> cancelled; the unit stops generating and the hold is released. */
  cancel(reason: string): void {
    if (this.done) return;
    const queued = this.state === "queued";
    this.to("cancelled");
    if (queued) return; // run() releases the hold once it is made
    this.unit?.cancel(this.id);
    this.settle("cancelled", undefined, reason).catch((err) => this.fx.log.error({ err, jobId: this.id }, "recording job failed"));
  }

  /** -> failed: the hold is released; the client hears `err` once that is recorded (or at once, mid-stream). */
  private fail(err: ApiError): void {
    const streaming = this.state === "streaming";
    this.to("failed");
    const settled = this.settle("failed", undefined, err.message);
    if (streaming) {
      settled.catch((dbErr) => this.fx.log.error({ err: dbErr, jobId: this.id }, "recording job failed"));
      this.out.fail(err);
      return;
    }
    settled.then(
      () => this.out.fail(err),
      () => this.out.fail(err),
    );
  }

  /**
   * The final row, then the credits: charged for a completed job whose output reached the client,
   * else (and if charging fails) released. A stream's tokens have reached the client as they came;
   * a whole response reaches it only once its row is recorded.
   */
  private async settle(status: JobStatus, usage?: Usage, error?: string): Promise<void> {
    let recorded = false;
    try {
      await this.started;
      await this.fx.records.finished(this, status, usage, error);
      recorded = true;
    } finally {
      const credits = this.fx.credits;
      const delivered = this.streamed || recorded;
      if (credits && status === "completed" && usage && this.paid && delivered) {
        await credits.charge(usage, this.paid.payees, this.paid.modelSha256);
      } else await credits?.release();
    }
  }

  /**
   * The running row is written once the first token has left for the client, so the embedded
   * database's work stays off the time to first token: the response flushes its first write at
   * the end of the current tick, and PGlite's work (synchronous, on this thread) would run
   * before that if it started in a microtask.
   */
  private recordStart(): void {
    this.started ??= new Promise((r) => setImmediate(r))
      .then(() => this.fx.records.started(this))
      .catch((err) => this.fx.log.error({ err, jobId: this.id }, "recording job start failed"));
  }

  private recordingFailed(err: unknown): void {
    this.fx.log.error({ err, jobId: this.id }, "recording job failed");
    this.out.fail(new ApiError("internal_error", "the coordinator could not record this job"));
  }

  private metered(reported: Usage): Usage {
    return meteredUsage(reported, { ...this.spec.bounds, relayedBytes: this.relayed.bytes });
  }

  private get unitId(): string {
    return this.unit?.id ?? "";
  }

  private to(state: JobState, unit?: string): void {
    if (!NEXT[this.state].includes(state)) throw new Error(`job ${this.id}: no transition from ${this.state} to ${state}`);
    this.state = state;
    this.history.push({ state, at: Date.now(), unit });
  }
}
