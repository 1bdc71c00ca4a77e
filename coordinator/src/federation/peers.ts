/**
 * Trusted peer sites as serving units (docs/federation.md). Every `pollMs` this site asks each
 * trusted peer what it serves (`GET /federation/v1/capacity`, signed), timing the round trip;
 * each peer that advertises models is a `PeerUnit`, which a job no unit here can take may be
 * forwarded to (`POST /federation/v1/jobs`, signed, with a transaction id). The peer streams
 * back its events with their tokens (routing.ts), which the job counts like any unit's chunks.
 * A client that goes away aborts the call (the peer cancels its job); a peer that fails
 * mid-stream is a failed unit; a peer cut off (`peer.untrusted`) fails its jobs at once.
 */
import { randomUUID } from "node:crypto";
import {
  capacityResponseSchema,
  describeZodError,
  FEDERATION_PREFIX,
  type ForwardedJobRequest,
  type ForwardedLine,
  type JobStart,
  MAX_CAPACITY_BYTES,
  type OpenAIErrorBody,
  type PeerCapacity,
  type ServedModel,
  type Usage,
} from "@sharedllm/protocol";
import type { Logger } from "pino";
import type { Address } from "viem";
import { promptTokenBound } from "../ledger/metering.js";
import { UNRELAYED_TOKENS } from "../ledger/usage.js";
import type { Metrics } from "../metrics.js";
import type { JobSink, Payees, ServingUnit } from "../units.js";
import { checkReceipt, type LedgerDomain } from "./clearing.js";
import type { Federation, PeerCutOff } from "./federation.js";
import { choosePeer, LineReader, type PriceLimit, peerFailure } from "./routing.js";
import type { FederatedJobs } from "./store.js";

/** How often peers are asked what they serve, by default. */
export const DEFAULT_CAPACITY_POLL_MS = 5_000;

/** How long a peer may take to end its answer after this site cancelled the job there. */
const CANCEL_END_TIMEOUT_MS = 5_000;
/** How long a capacity call may take before the peer counts as silent. */
const CAPACITY_TIMEOUT_MS = 5_000;

/** How long a peer may take to answer a forwarded job with its headers and first line, by default. */
export const FIRST_LINE_TIMEOUT_MS = 60_000;

/** The most events without tokens a peer may stream for one job (a role or a finish event has none). */
export const MAX_EMPTY_EVENTS = 256;

/** The most of a peer's refusal body that is read. */
const MAX_ERROR_BODY_BYTES = 16 * 1024;

/** What forwarding needs of this site. */
interface PeerContext {
  federation: Federation;
  log: Logger;
  metrics: Metrics;
  jobs: FederatedJobs;
  /** the ledger's EIP-712 domain, when this site charges: peers' receipts are checked in it */
  ledger?: LedgerDomain;
  /** how long a peer may take to send its headers and first line; default FIRST_LINE_TIMEOUT_MS */
  firstLineTimeoutMs?: number;
}

/** A response body as text, refused (and cancelled) once it exceeds `max` bytes. */
export async function readCapped(res: Response, max: number): Promise<string> {
  if (Number(res.headers.get("content-length")) > max) {
    await res.body?.cancel();
    throw new Error(`the peer's answer is longer than ${max} bytes`);
  }
  if (!res.body) return "";
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw new Error(`the peer's answer is longer than ${max} bytes`);
    }
    parts.push(value);
  }
  return Buffer.concat(parts).toString("utf8");
}

interface Forwarded {
  sink: JobSink;
  txid: string;
  model: string;
  abort: AbortController;
  /** the peer's price per 1000 tokens for the model when the job was sent: its receipt may charge no more */
  pricePer1k: { prompt: bigint; completion: bigint };
  /** tokens the peer streamed so far, as counted here */
  relayed: number;
  /** its log writes, in order: its end is recorded only after its start (each logs its own failure) */
  logged: Promise<void>;
  /** the client went away: the peer's answer is read on to its end line, within CANCEL_END_TIMEOUT_MS */
  cancelled?: NodeJS.Timeout;
  /** what the client was charged for when it went away: the peer's receipt may claim no more */
  sent?: { tokens: number; promptTokens: number };
  /** the most prompt tokens the origin charges its client for (promptTokenBound): the peer's receipt may claim no more */
  promptBound: number;
}

/** A trusted peer site, as one more serving unit. */
export class PeerUnit implements ServingUnit {
  readonly id: string;
  readonly incarnation = 0;
  models: ReadonlyMap<string, ServedModel> = new Map();
  capacity: PeerCapacity | null = null;
  private readonly jobs = new Map<string, Forwarded>();

  constructor(
    readonly address: Address,
    private readonly cx: PeerContext,
  ) {
    this.id = `peer:${address}`;
  }

  /** jobs forwarded to it and not finished */
  get active(): number {
    return this.jobs.size;
  }

  /** What it advertised, read just now. */
  advertised(capacity: PeerCapacity): void {
    this.capacity = capacity;
    // the Job reads a unit's model file from here (a continuation must run the same file)
    this.models = new Map(capacity.models.map((m) => [m.id, { id: m.id, sha256: m.sha256 } as ServedModel]));
  }

  /**
   * No node here did the work, so no receipt is proposed: this coordinator earns what its user
   * pays for the part, which refills its own escrow at the peer, where the peer charges it.
   */
  payees(): Payees {
    return { members: [], via: this.id, coordinator: true };
  }

  dispatch(job: JobStart, sink: JobSink): void {
    const txid = randomUUID();
    const model = String(job.request.model);
    const abort = new AbortController();
    const offer = this.capacity?.models.find((m) => m.id === model)?.pricePer1k;
    const pricePer1k = { prompt: BigInt(offer?.prompt ?? 0), completion: BigInt(offer?.completion ?? 0) };
    const key = { direction: "out" as const, peer: this.address, txid };
    const logged = this.logged(txid, this.cx.jobs.started({ ...key, jobId: job.jobId, model }));
    this.jobs.set(job.jobId, { sink, txid, model, abort, pricePer1k, relayed: 0, logged, promptBound: promptTokenBound(job.request) });
    const { n_predict: _, ...body } = job.request;
    const request: ForwardedJobRequest = {
      txid,
      kind: job.kind,
      body: body as ForwardedJobRequest["body"],
      generationLimit: Number(job.request.max_tokens),
    };
    this.forward(job.jobId, request, abort.signal).catch((err: Error) => {
      if (abort.signal.aborted) return;
      this.failed(job.jobId, { message: `the peer site ${this.address} failed: ${err.message}`, retryable: true });
    });
  }

  private async forward(jobId: string, request: ForwardedJobRequest, signal: AbortSignal): Promise<void> {
    // headers and the first line within the timeout, or the peer counts as failed
    const firstLine = new AbortController();
    const timeoutMs = this.cx.firstLineTimeoutMs ?? FIRST_LINE_TIMEOUT_MS;
    const timer = setTimeout(() => firstLine.abort(), timeoutMs);
    try {
      await this.stream(jobId, request, AbortSignal.any([signal, firstLine.signal]), () => clearTimeout(timer));
    } catch (err) {
      if (firstLine.signal.aborted && !signal.aborted) throw new Error(`it sent no answer within ${timeoutMs / 1000} s`);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private async stream(jobId: string, request: ForwardedJobRequest, signal: AbortSignal, answered: () => void): Promise<void> {
    const res = await this.cx.federation.signedFetch(this.address, "POST", `${FEDERATION_PREFIX}/jobs`, request, { signal });
    if (!res.ok || !res.body) {
      const text = await readCapped(res, MAX_ERROR_BODY_BYTES).catch(() => "");
      let body: Partial<OpenAIErrorBody> | undefined;
      try {
        body = JSON.parse(text) as Partial<OpenAIErrorBody>;
      } catch {
        body = undefined;
      }
      const message = typeof body?.error?.message === "string" ? body.error.message : `HTTP ${res.status}`;
      // a request the peer finds bad is the client's; anything else another unit may do
      const f = peerFailure(res.status, message);
      this.failed(jobId, { ...f, message: `the peer site refused the job: ${f.message}` });
      return;
    }
    // what the peer may stream: the job's generation limit, with the allowance a node gets
    const bounds = { maxTokens: request.generationLimit + UNRELAYED_TOKENS, tokens: 0, empty: 0 };
    const reader = new LineReader();
    const decoder = new TextDecoder();
    const stream = res.body.getReader();
    // a body not tied to the signal still stops being read when it aborts
    const stop = () => void stream.cancel().catch(() => undefined);
    // (the signal is this call's own: its listener goes with it)
    signal.addEventListener("abort", stop, { once: true });
    for (;;) {
      const { done, value } = await stream.read();
      if (signal.aborted) throw new Error("the call was aborted");
      if (done) break;
      for (const line of reader.push(decoder.decode(value, { stream: true }))) {
        answered();
        const f = this.jobs.get(jobId);
        if (!f) return; // cancelled, or cut off
        if ("c" in line && this.overBounds(jobId, line.t, bounds)) return;
        if ("c" in line) {
          f.relayed += typeof line.t === "number" ? line.t : line.t.length;
          if (!f.cancelled) f.sink.chunk(line.d, line.t);
        } else if ("p" in line) {
          // the job takes the first it is told, within its prompt bound when it charges
          if (!f.cancelled) f.sink.prompted?.(line.p);
        } else if ("end" in line) return this.ended(jobId, line);
        else return this.failedOnPeer(jobId, line.error);
      }
    }
    this.failed(jobId, { message: `the peer site ${this.address} ended its stream before the job's end`, retryable: true });
  }

  /** Counts an event's tokens; fails the job (and says so) once the peer streams past its bounds. */
  private overBounds(jobId: string, t: readonly number[] | number, b: { maxTokens: number; tokens: number; empty: number }): boolean {
    const n = typeof t === "number" ? t : t.length;
    b.tokens += n;
    if (n === 0) b.empty++;
    if (b.tokens > b.maxTokens) {
      this.failed(jobId, { message: `the peer site streamed more than the job's ${b.maxTokens} tokens`, retryable: true });
      return true;
    }
    if (b.empty > MAX_EMPTY_EVENTS) {
      this.failed(jobId, { message: `the peer site streamed more than ${MAX_EMPTY_EVENTS} events without tokens`, retryable: true });
      return true;
    }
    return false;
  }

  /** The peer's own failure of the job, as this site counts it (peerFailure). */
  private failedOnPeer(jobId: string, error: { message: string; status?: number }): void {
    const e = peerFailure(error.status, error.message);
    this.failed(jobId, { ...e, message: `on the peer site: ${e.message}` });
  }

  private ended(jobId: string, line: Extract<ForwardedLine, { end: unknown }>): void {
    const f = this.take(jobId);
    if (!f) return;
    f.abort.abort();
    const usage = line.end;
    this.finish(f, f.cancelled ? "cancelled" : "completed", usage);
    if (this.cx.ledger) void this.keepReceipt(f, line, this.cx.ledger);
    if (!f.cancelled) f.sink.end(usage);
  }

  /** Checks the peer's receipt for a job it served and keeps it: its credits count only when it holds. */
  private async keepReceipt(f: Forwarded, line: Extract<ForwardedLine, { end: unknown }>, ledger: LedgerDomain): Promise<void> {
    const job = {
      origin: this.cx.federation.address,
      server: this.address,
      txid: f.txid,
      completionTokens: f.sent?.tokens ?? f.relayed,
      promptTokens: f.sent?.promptTokens ?? Math.min(line.end.prompt_tokens, f.promptBound),
      pricePer1k: f.pricePer1k,
      cancelled: f.sent !== undefined,
    };
    try {
      const verdict = await checkReceipt(line, job, ledger);
      if (!verdict.accepted)
        this.cx.log.warn({ peer: this.address, txid: f.txid, reason: verdict.reason }, "a peer's receipt does not hold");
      await f.logged;
      await this.cx.jobs.receipt({ peer: this.address, txid: f.txid }, line, verdict);
    } catch (err) {
      this.cx.log.error({ err: (err as Error).message, txid: f.txid }, "keeping a peer's receipt failed");
    }
  }

  private failed(jobId: string, e: { message: string; retryable: boolean; status?: number }): void {
    const f = this.take(jobId);
    if (!f) return;
    f.abort.abort();
    if (f.cancelled) {
      this.finish(f, "cancelled", undefined, `client disconnected; then ${e.message}`);
      return;
    }
    this.finish(f, "failed", undefined, e.message);
    f.sink.error({ ...e, cause: "node_lost" });
  }

  /**
   * The client went away, charged for `sent` (output tokens, and the prompt the peer told). The
   * peer is told by a signed call to charge no more than that, and ends its answer with what it
   * charged, and its receipt for that, which this site checks (no more than `sent`) and keeps as
   * for a finished job; its
   * answer is read on to that end line (no longer relayed), or given up after
   * CANCEL_END_TIMEOUT_MS (the peer then sees the request go away, and cancels all the same). A
   * client charged nothing owes the peer nothing: the call is just dropped.
   */
  cancel(jobId: string, sent?: { tokens: number; promptTokens: number }): void {
    const f = this.jobs.get(jobId);
    if (!f || f.cancelled) return;
    if (!sent?.tokens) {
      // the client is charged nothing: nothing of it is owed; the peer sees the call go away and cancels
      this.take(jobId);
      f.abort.abort();
      this.finish(f, "cancelled", undefined, "client disconnected");
      return;
    }
    f.sent = sent;
    f.cancelled = setTimeout(
      () => this.failed(jobId, { message: "the peer sent no end after the cancel", retryable: false }),
      CANCEL_END_TIMEOUT_MS,
    );
    this.cx.federation
      .signedFetch(
        this.address,
        "POST",
        `${FEDERATION_PREFIX}/jobs/cancel`,
        { txid: f.txid, tokens: sent.tokens, promptTokens: sent.promptTokens },
        { signal: AbortSignal.timeout(CANCEL_END_TIMEOUT_MS) },
      )
      // a 404: the job ended there already, and its end line is on its way
      .then((res) => res.body?.cancel())
      .catch((err: Error) => this.cx.log.warn({ err: err.message, txid: f.txid }, "telling a peer site of a cancelled job failed"));
  }

  /** The peer was cut off: every job in flight there fails now (each may carry on elsewhere). */
  failJobs(reason: string): void {
    for (const jobId of [...this.jobs.keys()]) {
      this.failed(jobId, { message: `the peer site serving this request was cut off (${reason})`, retryable: true });
    }
  }

  private finish(f: Forwarded, status: "completed" | "failed" | "cancelled", usage?: Usage, error?: string): void {
    this.cx.metrics.federatedJob(this.address, "out", status);
    const key = { direction: "out" as const, peer: this.address, txid: f.txid };
    f.logged = this.logged(
      f.txid,
      f.logged.then(() => this.cx.jobs.finished(key, status, usage, error)),
    );
  }

  /** A write to the log of forwarded jobs, whose failure is logged here and ends nothing. */
  private logged(txid: string, write: Promise<void>): Promise<void> {
    return write.catch((err: Error) => this.cx.log.error({ err: err.message, txid }, "recording a forwarded job failed"));
  }

  private take(jobId: string): Forwarded | undefined {
    const f = this.jobs.get(jobId);
    this.jobs.delete(jobId);
    clearTimeout(f?.cancelled);
    return f;
  }
}

export interface PeersOptions extends PeerContext {
  /** how often peers are asked what they serve; default 5 s */
  pollMs?: number;
  /** whether this site forwards jobs now (the operator may turn it off while it runs); default on */
  outbound?: () => boolean;
  /** the most a job for `model` may cost per 1000 tokens at a peer: what this site charges for it */
  priceLimit?: (model: string) => PriceLimit | undefined;
}

/** The trusted peers this site may forward jobs to, with what each advertised last. */
export class Peers {
  private readonly units = new Map<string, PeerUnit>();
  private timer?: NodeJS.Timeout;
  private polling?: Promise<void>;
  private readonly onCutOff = (c: PeerCutOff) => this.cutOff(c);

  constructor(private readonly o: PeersOptions) {}

  /** Asks every trusted peer now, then every pollMs; cuts a peer's jobs when it stops being trusted. */
  async start(): Promise<void> {
    this.o.federation.on("peer.untrusted", this.onCutOff);
    await this.poll();
    this.timer = setInterval(() => void this.poll(), this.o.pollMs ?? DEFAULT_CAPACITY_POLL_MS);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.o.federation.off("peer.untrusted", this.onCutOff);
    await this.polling;
    for (const u of this.units.values()) u.failJobs("this coordinator is stopping");
  }

  /** Reads every trusted peer's capacity once (a peer that does not answer advertises nothing). */
  poll(): Promise<void> {
    this.polling ??= this.doPoll().finally(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  private async doPoll(): Promise<void> {
    const f = this.o.federation;
    const trusted = f.trustedPeers();
    await Promise.all(
      trusted.map(async (address) => {
        const unit = this.units.get(address) ?? new PeerUnit(address, this.o);
        this.units.set(address, unit);
        const t0 = performance.now();
        try {
          const res = await f.signedFetch(address, "GET", `${FEDERATION_PREFIX}/capacity`, undefined, {
            signal: AbortSignal.timeout(CAPACITY_TIMEOUT_MS),
          });
          if (!res.ok) {
            await res.body?.cancel();
            throw new Error(`HTTP ${res.status}`);
          }
          // a stranger's bytes: bounded, then checked whole; one bad entry throws the answer out
          const parsed = capacityResponseSchema.safeParse(JSON.parse(await readCapped(res, MAX_CAPACITY_BYTES)));
          if (!parsed.success) throw new Error(`its capacity does not parse: ${describeZodError(parsed.error).message}`);
          unit.advertised({
            inbound: parsed.data.inbound,
            models: parsed.data.models.map((m) => ({
              id: m.id,
              sha256: m.sha256,
              freeSlots: m.freeSlots,
              pricePer1k: { prompt: m.pricePer1k.prompt, completion: m.pricePer1k.completion },
            })),
            latencyMs: Math.round((performance.now() - t0) * 10) / 10,
            at: new Date().toISOString(),
          });
        } catch (err) {
          this.o.log.warn(
            { peer: address, err: (err as Error).message },
            "a peer's capacity could not be read; it gets no jobs until it can",
          );
          unit.advertised({ inbound: false, models: [], latencyMs: 0, at: new Date().toISOString() });
        }
      }),
    );
  }

  private cutOff(c: PeerCutOff): void {
    const unit = this.units.get(c.peer.toLowerCase());
    if (!unit) return;
    unit.capacity = null;
    unit.models = new Map();
    unit.failJobs(c.reason);
  }

  /** Whether some trusted peer advertises `model` (whether or not it has room now). */
  serves(model: string): boolean {
    for (const u of this.units.values()) if (this.usable(u) && u.models.has(model)) return true;
    return false;
  }

  /** The models trusted peers that take jobs now advertise. */
  models(): Set<string> {
    const out = new Set<string>();
    for (const u of this.units.values()) if (this.usable(u)) for (const id of u.models.keys()) out.add(id);
    return out;
  }

  /** Whether some trusted peer advertises `model`, whether or not it takes jobs now (503, not 404, when none does). */
  knows(model: string): boolean {
    for (const u of this.units.values()) if (u.capacity && u.models.has(model) && this.o.federation.isTrusted(u.address)) return true;
    return false;
  }

  /** The peer to forward a job for `model` to: the best trusted one with room within the price limit. */
  pick(model: string, allow: (u: PeerUnit) => boolean = () => true): PeerUnit | undefined {
    // asked again on every retry: a job submitted while outbound was on does not go out once it is off
    if (this.o.outbound && !this.o.outbound()) return undefined;
    const offers = [...this.units.values()]
      .filter((u) => this.usable(u) && allow(u))
      .map((u) => ({
        address: u.address as string,
        inbound: (u.capacity as PeerCapacity).inbound,
        models: (u.capacity as PeerCapacity).models,
        latencyMs: (u.capacity as PeerCapacity).latencyMs,
        active: u.active,
      }));
    const best = choosePeer(offers, model, this.o.priceLimit?.(model));
    return best && this.units.get(best.address);
  }

  /** A peer as this site sees it now, for `GET /v1/federation`. */
  get(address: string): PeerUnit | undefined {
    return this.units.get(address.toLowerCase());
  }

  private usable(u: PeerUnit): boolean {
    return Boolean(u.capacity?.inbound) && this.o.federation.isTrusted(u.address);
  }
}
