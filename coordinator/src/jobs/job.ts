/**
 * One job's life, from its credit hold to its last row: an object with explicit states, each
 * transition in one method and recorded in `history`.
 *
 *   queued -> dispatched -> streaming <-> continuing -> completed | failed | cancelled
 *
 * A job is queued while its credits are held and while it waits its turn for a unit with room
 * (queue.ts), dispatched once a serving unit has it (again, on another unit, when one fails
 * before any output: at most MAX_ATTEMPTS, each waiting its turn too), and streaming once
 * output has come. When its unit fails mid-job, the job is continuing: another unit with the same
 * model file is given the prompt and the output so far (the Transcript's tokens) and generates
 * the rest, and the client keeps its one response (docs/continuation.md). Every unit streams;
 * a client that asked for a whole response gets it assembled at the end. The effects (which
 * unit, the credits, the database rows, the client's response) come in as interfaces, so the
 * rules here are tested with fakes (job.test.ts).
 */
import { ApiError, type JobKind, type JobStart, type Usage } from "@sharedllm/protocol";
import type { JobStatus } from "../db/schema.js";
import { meteredUsage, UNRELAYED_TOKENS, type UsageBounds } from "../ledger/usage.js";
import type { FailureCause, JobSink, Payees, ServingUnit } from "../units.js";
import { Transcript } from "./transcript.js";

export type JobState = "queued" | "dispatched" | "streaming" | "continuing" | "completed" | "failed" | "cancelled";

/** The states each state may move to; the last three end the job. */
const NEXT: Record<JobState, readonly JobState[]> = {
  queued: ["dispatched", "failed", "cancelled"],
  dispatched: ["dispatched", "streaming", "completed", "failed", "cancelled"],
  streaming: ["continuing", "completed", "failed", "cancelled"],
  continuing: ["continuing", "streaming", "completed", "failed", "cancelled"],
  completed: [],
  failed: [],
  cancelled: [],
};

/** Attempts on different units before a job fails. */
export const MAX_ATTEMPTS = 3;

/** Times a job may be continued on another unit after failing mid-job. */
export const MAX_CONTINUATIONS = 3;

/** What a job is: the request as the engine gets it, and the bounds of what it may be charged. */
export interface JobSpec {
  start: JobStart;
  model: string;
  apiKeyId: string;
  /** bounds of the metered usage, but what was streamed (the job counts that itself) */
  bounds: Omit<UsageBounds, "relayedBytes" | "streamedTokens">;
  /** whether the request can be continued on another unit (one choice, no tools or forced format) */
  resumable: boolean;
  /** how long a unit may go without sending, once output has begun, before it counts as failed */
  stallMs: number;
}

/** The response to the client, told what to write. */
export interface JobOutput {
  /**
   * the first streamed chunk: the response starts here. `tokens`: what the unit said it streams
   * (a serving site relays them to the origin of a forwarded job)
   */
  open(unit: string, data: string, tokens?: readonly number[] | number): void;
  /** the prompt tokens the first unit told as its output began (a serving site tells the origin) */
  prompted?(promptTokens: number): void;
  /** every later streamed chunk (the hot path) */
  chunk(data: string, tokens?: readonly number[] | number): void;
  /** the stream is over, and recorded; `usage`: the job's, as metered */
  end(unit: string, usage: Usage): void;
  /** a whole (non-streaming) response, assembled, its usage metered, recorded */
  result(body: Record<string, unknown>, unit: string): void;
  /** the job failed: before `open`, the client gets this as the HTTP error; after, as the stream's last event */
  fail(err: ApiError): void;
  /**
   * the job was cancelled (its signal), and recorded; `usage`: what was charged for the output
   * streamed before, if any. Only a serving site answering a peer listens: it still has someone to
   * tell (the client's connection is gone otherwise)
   */
  cancelled?(unit: string, usage: Usage | undefined): void;
}

/** One unit's part of a job, as it is paid: who, for which model file, for what work. */
export interface PaidPart {
  payees: Payees;
  modelSha256: string | undefined;
  /** the prompt it processed, as counted here: a continuing unit's includes the output it was given again */
  promptTokens: number;
  completionTokens: number;
  /** where its tokens begin among the job's */
  from: number;
  /** the job's tokens through the end of its part, as streamed (ids, or UNTOLD_TOKEN): its receipt commits to those from `from` */
  output: readonly number[];
  /** it carried on the output of earlier parts */
  continued: boolean;
  /** the prompt its receipt names: the unit's own figure (its engine tokenized the output again) */
  receiptPromptTokens: number;
}

/** The credits of a paid job: held before it runs, then charged (with receipts) or released. */
export interface JobCredits {
  hold(): Promise<void>;
  /** charges the usage once and proposes receipts to each part's payees; releases the hold if that fails */
  charge(usage: Usage, parts: readonly PaidPart[]): Promise<void>;
  release(): Promise<void>;
}

/** Where the job's rows go (and its metrics). */
export interface JobRecords {
  /** the row of a running job */
  started(job: Job): Promise<void>;
  /** the final row, written before the client hears that the job is done */
  finished(job: Job, status: JobStatus, usage?: Usage, error?: string): Promise<void>;
}

/** The units a job ran on: id -> the unit's incarnation then (a re-formed split may be tried again). */
export type Tried = ReadonlyMap<string, number>;

export interface JobEffects {
  /** a unit for the next attempt, none of `tried` (unit id -> its incarnation then); undefined when none can take the job */
  pick(model: string, tried: Tried): ServingUnit | undefined;
  /** a unit to continue the job on now, none of `tried`, serving the model file `sha256` */
  continuer(model: string, sha256: string, tried: Tried): ServingUnit | undefined;
  /**
   * the job's turn for a unit (queue.ts): `take` dispatches to one if one can take the job now and
   * says whether it did; resolves true once it did (at once, with none waiting before it), false
   * when the wait runs out, or at once when no unit it has not tried could ever take it. A
   * continuing job goes first, and waits a bound of its own.
   */
  queue(take: () => boolean, signal: AbortSignal, o: { tried: Tried; continuing: boolean }): Promise<boolean>;
  /** continuations by cause, and the gap each left (failure to the next token) */
  observe?: { continued(cause: FailureCause): void; resumed(gapSeconds: number): void };
  /** absent for a free key */
  credits?: JobCredits;
  records: JobRecords;
  log: { warn(o: object, msg: string): void; error(o: object, msg: string): void };
}

/** A unit's part of the job: where it ran and which of the job's tokens it streamed. */
interface Part {
  unit: ServingUnit;
  /** it carries on the output of earlier parts: its events are a plain completion's */
  continued: boolean;
  /** who is paid for it, and the model file it ran: as they were when it was dispatched */
  payees: Payees;
  modelSha256: string | undefined;
  /** the job's tokens streamed before it began: its unit was given them again */
  from: number;
  /** the job's tokens streamed when it ended */
  to: number;
  /** the prompt tokens its unit reported (a continuing unit's include the output it was given again) */
  reportedPrompt?: number;
}

export class Job implements JobSink {
  state: JobState = "queued";
  /** every transition, in order */
  readonly history: { state: JobState; at: number; unit?: string }[] = [{ state: "queued", at: Date.now() }];
  /** the units that ran the job, in order; the last is running it */
  private readonly parts: Part[] = [];
  private readonly tried = new Map<string, number>();
  /** dispatches from the start, and continuations: each bounded */
  private attempts = 0;
  private continuations = 0;
  /** everything the units streamed: tokens, text, what bounds the charge */
  private readonly transcript: Transcript;
  private readonly streamed: boolean;
  private started: Promise<void> | undefined;
  /** the prompt tokens the first unit told as its output began */
  private promptTold: number | undefined;
  /** the model file the job runs: a continuing unit must hold the same */
  private modelSha256: string | undefined;
  /** when the unit last sent an event, and the watch on it once output has begun */
  private lastEventAt = 0;
  private stallWatch: NodeJS.Timeout | undefined;
  /** while continuing: when the unit failed (the gap runs to the next token) */
  private gapSince: number | undefined;
  /** the wait for a unit to start or continue the job on, while there is one */
  private waiting: AbortController | undefined;

  constructor(
    readonly spec: JobSpec,
    private readonly fx: JobEffects,
    private readonly out: JobOutput,
  ) {
    this.streamed = spec.start.stream;
    this.transcript = new Transcript({
      kind: spec.start.kind,
      resumable: spec.resumable,
      maxTokens: spec.bounds.generationLimit + UNRELAYED_TOKENS,
      stopBytes: [spec.bounds.stop ?? []].flat().reduce((n, s) => n + Buffer.byteLength(s), 0),
      id: spec.start.jobId,
      model: spec.model,
    });
  }

  get id(): string {
    return this.spec.start.jobId;
  }

  get kind(): JobKind {
    return this.spec.start.kind;
  }

  /** the unit of the latest attempt */
  get unit(): ServingUnit | undefined {
    return this.parts.at(-1)?.unit;
  }

  get done(): boolean {
    return NEXT[this.state].length === 0;
  }

  /**
   * Done, and everything after it too: its row written, its credits charged or released, its
   * client told. What a stopping coordinator waits for.
   */
  get over(): boolean {
    return this.concluded;
  }

  private concluded = false;

  /** queued: holds the credits (HTTP 402 when short: the job ends without a row), then dispatches. */
  async run(): Promise<void> {
    try {
      await this.fx.credits?.hold();
    } catch (err) {
      if (!this.done) this.to("failed");
      this.concluded = true;
      throw err;
    }
    // the client went away while the credits were held
    if (this.state === "cancelled") {
      try {
        return void (await this.fx.credits?.release());
      } finally {
        this.concluded = true;
      }
    }
    this.dispatch();
  }

  /** -> dispatched: the next attempt from the start, on a unit not tried yet; with none free now, once one is (it waits its turn). */
  private dispatch(): void {
    const take = () => {
      const unit = this.fx.pick(this.spec.model, this.tried);
      if (!unit) return false;
      this.parts.pop(); // an attempt that produced nothing is no part of the job
      this.attempts++;
      this.start(unit, "dispatched", this.spec.start);
      if (!this.streamed) this.recordStart();
      return true;
    };
    this.whenUnit(take, false, () => {
      const { model } = this.spec;
      this.fail(
        this.tried.size
          ? new ApiError("node_failed", `every node serving "${model}" failed this request; try again shortly`)
          : new ApiError("no_capacity", `no node serving "${model}" has capacity right now; try again shortly`),
      );
    });
  }

  /** Runs `take` when the job's turn for a unit comes (now, with none waiting before it); `none` when its wait runs out. */
  private whenUnit(take: () => boolean, continuing: boolean, none: () => void): void {
    const wait = new AbortController();
    this.waiting = wait;
    void this.fx.queue(take, wait.signal, { tried: this.tried, continuing }).then((taken) => {
      if (this.waiting === wait) this.waiting = undefined;
      if (!taken && !wait.signal.aborted && !this.done) none();
    });
  }

  private start(unit: ServingUnit, state: "dispatched" | "continuing", start: JobStart): void {
    this.tried.set(unit.id, unit.incarnation);
    // a split re-formed or a model swapped mid-job must not change who did this job's work
    const modelSha256 = unit.models.get(this.spec.model)?.sha256;
    if (state === "dispatched") this.modelSha256 = modelSha256;
    const from = this.transcript.tokens;
    this.parts.push({ unit, continued: state === "continuing", payees: unit.payees(), modelSha256, from, to: from });
    this.to(state, unit.id);
    // the unit has it now: what it reports, even at once, is the job's
    this.waiting = undefined;
    unit.dispatch(start, this);
  }

  /** The prompt the first unit's engine took, as it tells it: what a client leaving mid-stream pays for its prompt (within the bound). */
  prompted(promptTokens: number): void {
    const first = this.parts[0];
    if (this.parts.length !== 1 || first?.continued || (this.state !== "dispatched" && this.state !== "streaming")) return;
    if (this.promptTold !== undefined) return;
    this.promptTold = promptTokens;
    this.out.prompted?.(promptTokens);
  }

  /** An event the unit streamed: the first moves the job to streaming; a streaming client gets each as it comes. */
  chunk(data: string, tokens: readonly number[] | number): void {
    try {
      this.onChunk(data, tokens);
    } catch (err) {
      // nothing a unit sends may take the coordinator down: it is that unit's failure
      this.fx.log.error({ err, jobId: this.id, nodeId: this.unit?.id }, "a unit's event broke the job");
      this.unit?.cancel(this.id);
      this.error({ message: "the node sent an event the coordinator cannot read", retryable: false });
    }
  }

  private onChunk(data: string, tokens: readonly number[] | number): void {
    if (this.state !== "dispatched" && this.state !== "streaming" && this.state !== "continuing") return;
    const part = this.parts.at(-1) as Part;
    const relay = this.transcript.add(data, tokens, part.continued);
    part.to = this.transcript.tokens;
    const overrun = this.transcript.overrun;
    if (overrun) {
      // a unit streaming past the job's limit is stopped, and the job ends: nothing of it is relayed or kept
      this.fx.log.warn({ jobId: this.id, nodeId: this.unit?.id, reason: overrun }, "a unit streamed more than its job allows");
      this.unit?.cancel(this.id);
      this.error({ message: `the node streamed more than the job allows (${overrun})`, retryable: false });
      return;
    }
    this.lastEventAt = performance.now();
    if (this.state === "streaming") {
      if (relay !== undefined && this.streamed) this.out.chunk(relay, tokens);
      return;
    }
    const first = this.state === "dispatched";
    this.to("streaming");
    this.watchStalls();
    if (this.gapSince !== undefined) {
      this.fx.observe?.resumed((performance.now() - this.gapSince) / 1000);
      this.gapSince = undefined;
    }
    if (!this.streamed) return;
    if (first) {
      this.out.open(this.unitId, data, tokens);
      this.recordStart();
    } else if (relay !== undefined) this.out.chunk(relay, tokens);
  }

  /** The unit's stream ended: -> completed, charged and recorded before the client hears it. */
  end(reported: Usage, resumed = 0): void {
    if (this.done || this.state === "queued") return;
    const part = this.parts.at(-1) as Part;
    part.reportedPrompt = reported.prompt_tokens;
    // a continuing unit's prompt held the output so far: the client's prompt is the rest
    const prompt = Math.max(0, reported.prompt_tokens - resumed);
    // the engine counts an end token it streamed in no event: one more than the unit streamed is believed
    const endToken = reported.completion_tokens > this.transcript.tokens - part.from ? 1 : 0;
    const usage = meteredUsage(prompt, {
      ...this.spec.bounds,
      relayedBytes: this.transcript.bytes,
      streamedTokens: this.transcript.tokens + endToken,
    });
    this.to("completed");
    this.conclude(
      this.settle("completed", usage),
      () => {
        if (!this.streamed) return this.out.result(this.transcript.body(usage), this.unitId);
        // the usage is the job's, as metered, not a unit's word
        if (this.spec.start.includeUsage) this.out.chunk(JSON.stringify(this.transcript.event("", null, usage)), 0);
        this.out.end(this.unitId, usage);
      },
      (err) => this.recordingFailed(err),
    );
  }

  /**
   * The unit failed the job. Before any output: another attempt if it may be retried. Mid-job:
   * it continues on another unit when the request allows. Else -> failed.
   */
  error(e: { message: string; retryable: boolean; status?: number; cause?: FailureCause }): void {
    // a job waiting for a unit has none running: what a failed one sends now is late
    if (this.done || this.state === "queued" || this.waiting) return;
    // an engine that refuses a continuation refuses what the job's units made, not the client's request
    const clientFault = e.status !== undefined && e.status < 500 && !this.parts.at(-1)?.continued;
    if (!clientFault && this.state === "dispatched" && e.retryable && this.attempts < MAX_ATTEMPTS) {
      this.fx.log.warn({ jobId: this.id, nodeId: this.unit?.id, reason: e.message }, "job failed on a node before output; trying another");
      this.dispatch();
      return;
    }
    const resume = this.transcript.resume();
    if (!clientFault && this.state !== "dispatched" && resume && this.continuations < MAX_CONTINUATIONS) {
      this.fx.log.warn({ jobId: this.id, nodeId: this.unit?.id, reason: e.message }, "job failed mid-stream; continuing on another node");
      this.continueJob(resume, e.cause ?? "engine");
      return;
    }
    this.fail(
      clientFault
        ? new ApiError("invalid_request", e.message)
        : new ApiError("node_failed", `generation failed on the serving node: ${e.message}`),
    );
  }

  /**
   * A unit that sends nothing for stallMs once output has begun (its engine hung, or its machine
   * froze with its connection open) has failed the job: it is stopped there and continues elsewhere.
   */
  private watchStalls(): void {
    this.stallWatch ??= setInterval(
      () => {
        if (this.state !== "streaming" || performance.now() - this.lastEventAt < this.spec.stallMs) return;
        this.unit?.cancel(this.id);
        this.error({ message: `the node sent nothing for ${this.spec.stallMs} ms mid-stream`, retryable: false, cause: "stalled" });
      },
      Math.max(10, this.spec.stallMs / 4),
    );
    this.stallWatch.unref();
  }

  /** -> continuing: the output so far goes to another unit with the same model file, which generates the rest. */
  private continueJob(resume: NonNullable<JobStart["resume"]>, cause: FailureCause): void {
    const failed = this.parts.at(-1) as Part;
    // a unit that streamed nothing did no part of the job
    if (failed.to === failed.from) this.parts.pop();
    this.continuations++;
    this.to("continuing");
    this.fx.observe?.continued(cause);
    // the gap runs from the first failure to the next token, however many units fail in between
    this.gapSince ??= performance.now();
    const sha256 = this.modelSha256;
    const take = () => {
      const unit = sha256 && this.fx.continuer(this.spec.model, sha256, this.tried);
      if (!unit) return false;
      const left = Math.max(1, this.spec.bounds.generationLimit - this.transcript.tokens);
      const { request } = this.spec.start;
      this.start(unit, "continuing", { ...this.spec.start, request: { ...request, max_tokens: left, n_predict: left }, resume });
      return true;
    };
    const none = () =>
      this.fail(
        new ApiError(
          "node_failed",
          `the node serving this request failed and no other node serving "${this.spec.model}" could continue it; try again`,
        ),
      );
    if (sha256) this.whenUnit(take, true, none);
    else none();
  }

  /**
   * The client went away: -> cancelled; the unit stops generating. A stream that had begun is
   * charged for the output sent, as counted here, and for its prompt as the first unit told it
   * (within the bound), and its units are receipted for their parts. A peer site's job (`atMost`)
   * is charged no more output and prompt than the peer says it charged its client. Else the hold
   * is released.
   */
  cancel(reason: string, atMost?: { tokens: number; promptTokens: number }): void {
    if (this.done) return;
    const queued = this.state === "queued";
    const waited = this.waiting;
    this.to("cancelled");
    this.waiting?.abort();
    if (queued) {
      const told = () => this.out.cancelled?.(this.unitId, undefined);
      // run() releases the hold once it is made; a job waiting its turn for a unit has made it
      if (!waited) {
        told();
        return;
      }
      this.conclude(this.fx.credits?.release() ?? Promise.resolve(), told, (err) => {
        this.fx.log.error({ err, jobId: this.id }, "releasing the hold failed");
        told();
      });
      return;
    }
    const streamed = Math.min(this.transcript.tokens, atMost?.tokens ?? Number.POSITIVE_INFINITY);
    const prompt = Math.min(this.promptTold ?? 0, atMost?.promptTokens ?? Number.POSITIVE_INFINITY);
    const sent =
      this.streamed && streamed > 0
        ? meteredUsage(prompt, {
            ...this.spec.bounds,
            relayedBytes: this.transcript.bytes,
            streamedTokens: streamed,
          })
        : undefined;
    this.unit?.cancel(this.id, sent && { tokens: sent.completion_tokens, promptTokens: sent.prompt_tokens });
    // a unit picked to continue the job that streamed nothing did no part of it
    const last = this.parts.at(-1);
    if (last && last.to === last.from && this.parts.length > 1) this.parts.pop();
    this.conclude(
      this.settle("cancelled", sent, reason),
      () => this.out.cancelled?.(this.unitId, sent),
      (err) => {
        this.fx.log.error({ err, jobId: this.id }, "recording job failed");
        this.out.cancelled?.(this.unitId, undefined);
      },
    );
  }

  /**
   * -> failed: the hold is released; the client hears `err` once that is recorded, mid-stream too,
   * so a client that saw the error finds the job failed.
   */
  private fail(err: ApiError): void {
    this.to("failed");
    this.waiting?.abort();
    this.conclude(
      this.settle("failed", undefined, err.message),
      () => this.out.fail(err),
      (dbErr) => {
        this.fx.log.error({ err: dbErr, jobId: this.id }, "recording job failed");
        this.out.fail(err);
      },
    );
  }

  /** Once `settled` (the final row and the credits): the client is told (`then`, or `otherwise` if settling failed), and the job is over. */
  private conclude(settled: Promise<void>, then: () => void, otherwise: (err: unknown) => void): void {
    settled.then(then, otherwise).finally(() => {
      this.concluded = true;
    });
  }

  /**
   * The final row, then the credits: `usage` charged when the output reached the client (a
   * completed job, or a stream the client gave up), else (and if charging fails) released. A
   * stream's tokens have reached the client as they came; a whole response reaches it only once
   * its row is recorded.
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
      if (credits && usage && delivered) await credits.charge(usage, this.paidParts(usage));
      else await credits?.release();
    }
  }

  /**
   * Each unit's part as it is paid: the prompt and the output it was given again (counted here),
   * and its own tokens (the last one's: what the metered usage leaves for it). Its receipt names
   * the prompt its unit reported, which holds the output as its engine tokenized it again.
   */
  private paidParts(usage: Usage): PaidPart[] {
    return this.parts.map((p, i) => {
      const last = i === this.parts.length - 1;
      const to = last ? Math.max(p.from, usage.completion_tokens) : Math.min(p.to, usage.completion_tokens);
      const promptTokens = usage.prompt_tokens + p.from;
      const completionTokens = Math.max(0, to - p.from);
      return {
        payees: p.payees,
        modelSha256: p.modelSha256,
        promptTokens,
        completionTokens,
        from: p.from,
        output: this.transcript.told.slice(0, p.from + completionTokens),
        continued: p.continued,
        receiptPromptTokens:
          last && p.reportedPrompt !== undefined ? Math.min(p.reportedPrompt, 2 * promptTokens + UNRELAYED_TOKENS) : promptTokens,
      };
    });
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

  private get unitId(): string {
    return this.unit?.id ?? "";
  }

  private to(state: JobState, unit?: string): void {
    if (!NEXT[this.state].includes(state)) throw new Error(`job ${this.id}: no transition from ${this.state} to ${state}`);
    this.state = state;
    this.history.push({ state, at: Date.now(), unit });
    if (this.done) clearInterval(this.stallWatch);
  }
}
