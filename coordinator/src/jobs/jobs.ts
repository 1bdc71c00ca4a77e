/**
 * Where jobs are made: a validated request becomes a `Job` (job.ts) with its engine request, its
 * generation limit and charge bounds, its credit hold when the key is wallet-bound, and the
 * serving units it may run on. A model that no unit serves now but the coordinator knows how to
 * get is loaded on demand first: an idle node with room pulls it, and the request waits for the
 * fleet to report it served.
 */
import { randomUUID } from "node:crypto";
import { ApiError, asksForLogprobs, engineRequest, type JobKind, promptHash, requestedMaxTokens } from "@sharedllm/protocol";
import type { FastifyBaseLogger } from "fastify";
import type { ApiKeyInfo } from "../apiKeys.js";
import type { Audits } from "../audits/audits.js";
import type { KnownModel } from "../catalogue.js";
import type { Db } from "../db/database.js";
import type { ForwardingSettings } from "../federation/forwarding.js";
import type { Peers } from "../federation/peers.js";
import type { Fleet, SchedulingPolicy } from "../fleet.js";
import { type Metering, promptTokenBound } from "../ledger/metering.js";
import type { Receipts } from "../ledger/receipts.js";
import type { Metrics } from "../metrics.js";
import type { ConnectedNode, RemoteUnit, ServingUnit } from "../units.js";
import { CreditHold } from "./credits.js";
import { Job, type JobCredits, type JobOutput, type Tried } from "./job.js";
import { Queue } from "./queue.js";
import { JobTable } from "./records.js";

/**
 * The generation limit of a request without max_tokens. It is the coordinator's, not a node's
 * word (a node that claimed a huge context would make every such request unaffordable).
 */
const DEFAULT_MAX_TOKENS = 4096;

/** How long a request waits for a model a node is loading on demand. */
const LOAD_WAIT_MS = 180_000;

/** How long a job whose unit failed mid-job waits for another to continue it. */
const CONTINUE_WAIT_MS = 5_000;

/**
 * How long a unit may go without sending once output has begun: far longer than a token takes on
 * any machine that serves at all, and than a continuing unit's replay between two events.
 */
const STALL_MS = 20_000;

export interface JobsOptions {
  db: Db;
  /** this coordinator process's lease id: its jobs' rows name it */
  instance: string;
  fleet: Fleet;
  metrics: Metrics;
  /** extra say over where each job may run */
  policy?: SchedulingPolicy;
  /** models ever served here (404 vs 503), with where nodes can pull them from */
  knownModels: ReadonlyMap<string, KnownModel>;
  /** credits: wallet-bound keys pay for their jobs, serving nodes get receipts; absent = free */
  ledger?: { metering: Metering; receipts: Receipts; audits?: Audits };
  /** how long a job whose unit failed mid-job waits for another to continue it; default 5 s */
  continueWaitMs?: number;
  /** how long a unit may go without sending once output has begun before it counts as failed; default 20 s */
  stallMs?: number;
  /** how long a job waits its turn for a unit with room (and for a model whose nodes just left); default 10 s */
  queueWaitMs?: number;
  /** trusted peer sites a job no unit here can take may be forwarded to, when outbound is on */
  peers?: Peers;
  forwarding?: ForwardingSettings;
}

/** A request the OpenAI plugin has validated. */
export interface JobRequest {
  kind: JobKind;
  body: Record<string, unknown> & { model: string; stream?: boolean; stream_options?: { include_usage?: boolean } | null };
  apiKey: ApiKeyInfo;
  /** aborts when the client goes away */
  signal: AbortSignal;
  log: FastifyBaseLogger;
  /** only this unit may run it (the coordinator's own canary jobs; docs/verification.md) */
  only?: string;
  /** its credits instead of the key's (a canary's: not charged, audited) */
  credits?: JobCredits;
}

export class Jobs {
  private readonly records: JobTable;
  /** jobs started and not yet seen to end */
  private readonly live = new Set<Job>();
  private readonly queue: Queue;
  /** requests waiting for their model (its nodes coming back, or loading) before their job starts */
  private arriving = 0;
  /** aborts as this coordinator stops: new requests are refused, and one waiting for its model at once */
  private readonly stopping = new AbortController();
  /** stopping with replicas: this replica's own nodes go to others, and take no job from here */
  private handingOver = false;

  constructor(private readonly o: JobsOptions) {
    this.records = new JobTable(o.db, o.metrics, o.instance);
    this.queue = new Queue(o.fleet, o.queueWaitMs);
    o.metrics.countWaiting(() => this.queue.size);
  }

  /**
   * From now on every request is refused (503): this coordinator is stopping. `handOver`: its
   * nodes go to other replicas, so no job here, not even one waiting its turn, is given one of them.
   */
  stopTaking(handOver: boolean): void {
    this.handingOver = handOver;
    this.stopping.abort();
  }

  /** How many requests are not over yet: jobs, and requests waiting for their model before their job starts. */
  inFlight(): number {
    for (const job of this.live) if (job.over) this.live.delete(job);
    return this.live.size + this.arriving;
  }

  /** Starts a job for `r`, its output going to `out`; throws (an ApiError) when it cannot start. */
  async submit(r: JobRequest, out: JobOutput): Promise<Job> {
    const { fleet, policy, metrics, ledger, knownModels } = this.o;
    if (this.stopping.signal.aborted) throw stopping();
    const { body, apiKey, signal } = r;
    // however many times it waits (its model's nodes coming back, a unit with room, after a failure), a request waits this long in all
    const waitUntil = Date.now() + this.queue.waitMs;
    const peers = this.forwardable(r) ? this.o.peers : undefined;
    if (!fleet.servesModel(body.model) && !peers?.serves(body.model)) {
      const remote = this.o.peers?.knows(body.model);
      const refusal = remote && this.refusal(r);
      if (refusal) {
        metrics.federationRefused(refusal);
        throw new ApiError(
          "no_capacity",
          refusal === "outbound_off"
            ? `only peer sites serve "${body.model}", and this site forwards no jobs to them now; try again later`
            : `only peer sites serve "${body.model}", and this key's jobs stay on this site (${apiKey.policy}); use another key or model`,
        );
      }
      if (remote && !knownModels.has(body.model)) {
        metrics.federationRefused("no_peer");
        throw new ApiError("no_capacity", `only peer sites serve "${body.model}", and none takes jobs now; try again later`);
      }
      this.arriving++;
      try {
        // its nodes are on their way to another replica, or reconnecting: the request waits for them
        const waiting = AbortSignal.any([signal, this.stopping.signal]);
        if (!(await this.queue.returns(body.model, waitUntil, waiting)) && !waiting.aborted)
          await this.loadOnDemand(body.model, waiting, r.log);
      } finally {
        this.arriving--;
      }
      if (this.stopping.signal.aborted) throw stopping();
    }
    const owner = apiKey.owner?.toLowerCase();
    // own_nodes: only a node whose every payee is the key's owner (a private pool)
    const ownNode = (n: ServingUnit) => {
      const members = n.payees().members;
      return members.length > 0 && members.every((m) => m.node.toLowerCase() === owner);
    };
    const allowed = (n: ServingUnit) => apiKey.policy !== "own_nodes" || ownNode(n);
    /** the units this job may run on, taking jobs now or not */
    const mayRun = (n: ConnectedNode | RemoteUnit) =>
      allowed(n) && (!r.only || n.id === r.only) && (!policy || policy({ model: body.model, apiKeyId: apiKey.id }, n));
    /** a unit a job may be given now: none of this replica's own while it hands them over */
    const givable = (n: ConnectedNode | RemoteUnit) => !this.handingOver || fleet.get(n.id) !== n;
    const jobId = `job_${randomUUID()}`;
    // the engine generates at most what the credits were reserved for
    const generationLimit = requestedMaxTokens(body as never) ?? DEFAULT_MAX_TOKENS;
    const promptTokens = promptTokenBound(body);
    // a wallet-bound key pays: hold the worst case now (402 before anything runs), charge the actual usage at the end
    const payer = ledger && apiKey.owner ? (apiKey.owner as `0x${string}`) : undefined;
    const request = engineRequest(body as never, generationLimit);
    const job = new Job(
      {
        start: {
          type: "job.start",
          jobId,
          kind: r.kind,
          stream: body.stream === true,
          includeUsage: body.stream_options?.include_usage === true,
          request,
        },
        model: body.model,
        apiKeyId: apiKey.id,
        bounds: { promptTokens, generationLimit, stop: (body as { stop?: string | string[] | null }).stop },
        resumable: !r.only && resumable(body),
        stallMs: this.o.stallMs ?? STALL_MS,
      },
      {
        pick(model, tried) {
          const t0 = performance.now();
          const unit =
            fleet.pick(model, (n) => untried(tried, n) && mayRun(n) && givable(n)) ?? peers?.pick(model, (u) => untried(tried, u));
          metrics.scheduled((performance.now() - t0) / 1000);
          return unit;
        },
        continuer: (model, sha256, tried) =>
          fleet.pick(model, (n) => untried(tried, n) && n.models.get(model)?.sha256 === sha256 && mayRun(n) && givable(n)),
        queue: (take, signal, { tried, continuing }) =>
          continuing
            ? this.queue.wait(body.model, take, { until: Date.now() + (this.o.continueWaitMs ?? CONTINUE_WAIT_MS), signal, first: true })
            : this.queue.wait(body.model, take, {
                until: waitUntil,
                signal,
                // a job that only units it may not run on, or has tried, serve has nothing to wait for
                hopeless: () => !fleet.anyServing(body.model, (n) => untried(tried, n) && mayRun(n)),
              }),
        observe: metrics,
        credits:
          r.credits ??
          (payer &&
            ledger &&
            new CreditHold(
              ledger,
              payer,
              { id: jobId, kind: r.kind, model: body.model, request, promptHash: promptHash(request) },
              ledger.metering.price(body.model),
              { promptTokens, generationLimit },
            )),
        records: this.records,
        log: r.log,
      },
      out,
    );
    if (signal.aborted) job.cancel("client disconnected");
    else signal.addEventListener("abort", () => job.cancel("client disconnected"), { once: true });
    this.live.add(job);
    await job.run();
    return job;
  }

  /** Why a request may not be forwarded to a peer site, if it may not. */
  private refusal(r: JobRequest): "outbound_off" | "site_only" | "own_nodes" | undefined {
    if (r.apiKey.policy !== "any") return r.apiKey.policy;
    if (!this.o.forwarding?.outbound || r.only || r.credits) return "outbound_off";
    return undefined;
  }

  /** Whether a request may be forwarded to a peer site: outbound on, and a key that may leave the site. */
  private forwardable(r: JobRequest): boolean {
    return Boolean(this.o.peers) && this.refusal(r) === undefined;
  }

  /**
   * A model known here but served by no node now: an idle node with room is asked to pull and
   * load it, and the request waits until the fleet serves it (or the loader fails or goes, the
   * wait runs out, or the client gives up).
   */
  private async loadOnDemand(model: string, signal: AbortSignal, log: FastifyBaseLogger): Promise<void> {
    const { fleet, knownModels } = this.o;
    const known = knownModels.get(model);
    if (!known) throw unknownModel(fleet, model);
    if (!known.source) {
      throw new ApiError(
        "no_capacity",
        `no node serves "${model}" now, and it is not a model this coordinator loads on demand; try again later`,
      );
    }
    const loader = fleet.requestLoad(known);
    if (!loader) {
      throw new ApiError("no_capacity", `no node serves "${model}" now and none has room to load it; try again later`);
    }
    log.info({ model, nodeId: loader.id }, "model in demand: a node is loading it");
    const outcome = await fleet.until(
      () => (fleet.servesModel(model) ? "served" : fleet.get(loader.id) !== loader || loader.loading !== model ? "failed" : undefined),
      LOAD_WAIT_MS,
      signal,
    );
    if (outcome === "served") return;
    if (outcome === "failed") throw new ApiError("no_capacity", `loading "${model}" on a node failed; try again later`);
    throw new ApiError(
      "timeout",
      signal.aborted ? "the client went away while the model was loading" : `"${model}" is still loading; try again shortly`,
    );
  }
}

/** The refusal of a request that comes as this coordinator stops. */
function stopping(): ApiError {
  return new ApiError("no_capacity", "this coordinator is stopping; send the request again");
}

/** Whether a job has not tried `unit`, or tried it in another incarnation (a split since re-formed). */
function untried(tried: Tried, unit: ServingUnit): boolean {
  return tried.get(unit.id) !== unit.incarnation;
}

/**
 * Whether a request's output can be carried on by another unit as a plain completion of the
 * prompt plus the output so far: one choice, and nothing the engine shapes beyond the text
 * (tool calls, a forced format, log-probabilities the client reads).
 */
function resumable(body: Record<string, unknown>): boolean {
  const set = (v: unknown) => v !== undefined && v !== null && v !== false;
  return (!set(body.n) || body.n === 1) && !set(body.tools) && !set(body.response_format) && !asksForLogprobs(body);
}

/** 404 for a model never served here, naming those that are. */
export function unknownModel(fleet: Fleet, model: string): ApiError {
  const served = [...new Set(fleet.all().flatMap((n) => [...n.models.keys()]))];
  return new ApiError(
    "model_not_found",
    `model "${model}" does not exist here; available: ${served.join(", ") || "none (no node is connected)"}`,
    { param: "model" },
  );
}
