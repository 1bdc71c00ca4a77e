/**
 * The serving side of forwarded jobs (docs/federation.md), signed routes under
 * FEDERATION_PREFIX: `GET /capacity` (what this site serves peers: models by file and name,
 * free slots, price per 1000 tokens) and `POST /jobs` (a peer's job, run once per transaction
 * id as one of this site's own jobs on its own units, never forwarded on: its key is
 * `site_only`). The answer streams as NDJSON lines carrying each event with its tokens, so the
 * origin counts them like any unit's. The peer is this site's customer: its coordinator's
 * address is the payer, at this site's price, and the nodes earn their receipts as for any job.
 */
import { randomBytes } from "node:crypto";
import {
  type AdvertisedModel,
  ApiError,
  type CapacityResponse,
  chatCompletionRequestSchema,
  completionRequestSchema,
  describeZodError,
  type FederationReceipt,
  type FederationReceiptWire,
  FORWARDED_STREAM_TYPE,
  type ForwardedLine,
  federationReceiptToWire,
  forwardedJobCancelSchema,
  forwardedJobRequestSchema,
  type Usage,
} from "@sharedllm/protocol";
import type { FastifyInstance } from "fastify";
import type { Address, Hex } from "viem";
import type { ApiKeyInfo } from "../apiKeys.js";
import { hashSecret } from "../credentials.js";
import type { Db } from "../db/database.js";
import type { Fleet } from "../fleet.js";
import type { Job, JobOutput } from "../jobs/job.js";
import type { Jobs } from "../jobs/jobs.js";
import { jobCost, type Price } from "../ledger/metering.js";
import type { Metrics } from "../metrics.js";
import { receiptTxid } from "./clearing.js";
import type { Federation, PeerCutOff, VerifiedPeer } from "./federation.js";
import { forwardedLine } from "./routing.js";
import { type FederatedJobs, FederationTransactions } from "./store.js";

/** A site's say on forwarding, which its operator may change while it runs. */
export interface ForwardingSettings {
  /** forward jobs no unit here can take to trusted peers */
  outbound: boolean;
  /** run jobs trusted peers forward here */
  inbound: boolean;
  /** the most jobs one peer may have running here at once; undefined: no cap */
  inboundCapPerPeer?: number;
}

export interface InboundOptions {
  db: Db;
  /** whom this site trusts: a peer cut off has its jobs here cancelled at once */
  federation: Federation;
  fleet: Fleet;
  jobs: Jobs;
  metrics: Metrics;
  settings: ForwardingSettings;
  /** credits per token of a model here; absent: free */
  price?: (model: string) => Price;
  /** the log of forwarded jobs (the coordinator's one, whose traffic GET /v1/federation shows) */
  log: FederatedJobs;
  /** when this site charges: its address, and how it signs a federation receipt (its coordinator key) */
  clearing?: { self: Address; sign(r: FederationReceipt): Promise<Hex> };
}

/** What this site advertises to peers now: its models with their files, free slots and prices. */
export function advertise(fleet: Fleet, price?: (model: string) => Price): AdvertisedModel[] {
  const byModel = new Map<string, AdvertisedModel>();
  for (const n of fleet.list()) {
    if (!n.accepting) continue;
    for (const [id, m] of n.models) {
      const free = Math.max(0, n.slots - n.active);
      const known = byModel.get(id);
      if (known) {
        known.freeSlots += free;
        continue;
      }
      const p = price?.(id) ?? { prompt: 0n, completion: 0n };
      byModel.set(id, {
        id,
        sha256: m.sha256,
        freeSlots: free,
        pricePer1k: { prompt: (p.prompt * 1000n).toString(), completion: (p.completion * 1000n).toString() },
      });
    }
  }
  return [...byModel.values()].sort((a, b) => a.id.localeCompare(b.id));
}

/** A federation receipt as it goes to the origin, with this site's signature. */
type SignedReceipt = { receipt: FederationReceiptWire; signature: Hex };

/** The signed routes a peer calls to have this site serve its users. */
export function inboundRoutes(o: InboundOptions) {
  const transactions = new FederationTransactions(o.db);
  const log = o.log;
  const running = new Map<string, number>();
  /**
   * each peer's jobs running here by txid: `gone` ends one at once (the peer was cut off), `cancel`
   * cancels it at the peer's word, its answer ending with what was charged
   */
  const inFlight = new Map<string, Map<string, { gone: AbortController; cancel: AbortController; job?: Job }>>();
  const keys = new Map<string, ApiKeyInfo>();

  /** Counts one job of `peer` against its cap; the release counts it out exactly once, whatever path ends it. */
  function claimSlot(peer: string): () => void {
    running.set(peer, (running.get(peer) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (running.get(peer) ?? 1) - 1;
      if (left > 0) running.set(peer, left);
      else running.delete(peer);
    };
  }

  /** A peer cut off (revoked, unendorsed, expired, registry unreadable): its jobs here stop now. */
  const onCutOff = (c: PeerCutOff) => {
    for (const { gone } of inFlight.get(c.peer.toLowerCase())?.values() ?? [])
      gone.abort(new Error(`your site was cut off here (${c.reason})`));
  };

  /** The peer's key here: its coordinator pays for its jobs, which never leave this site. */
  async function keyOf(peer: VerifiedPeer): Promise<ApiKeyInfo> {
    let key = keys.get(peer.address);
    if (key) return key;
    key = { id: `key_peer_${peer.address}`, name: `federation peer ${peer.address}`, owner: peer.address, policy: "site_only" };
    await o.db
      .insertInto("api_keys")
      // a key nobody can present: its secret is thrown away
      .values({
        id: key.id,
        name: key.name,
        key_hash: hashSecret(randomBytes(32).toString("hex")),
        owner_address: peer.address,
        policy: "site_only",
      })
      .onConflict((c) => c.column("id").doNothing())
      .execute();
    keys.set(peer.address, key);
    return key;
  }

  /**
   * The federation receipt for a job run here for a peer (docs/federation.md, Clearing): what this
   * site charged the peer for it, signed; none when the job was free or signing failed (then the
   * peer accepts nothing for it, and this site settles nothing of it).
   */
  async function signedReceipt(
    origin: Address,
    txid: string,
    model: string,
    /** the unit that ran it: the receipt names the model file it served */
    unit: string,
    usage: { prompt_tokens: number; completion_tokens: number },
  ): Promise<SignedReceipt | undefined> {
    const clearing = o.clearing;
    if (!clearing || !o.price) return undefined;
    const credits = jobCost(o.price(model), usage.prompt_tokens, usage.completion_tokens);
    const sha256 = o.fleet.get(unit)?.models.get(model)?.sha256;
    if (credits === 0n || !sha256) return undefined;
    const receipt: FederationReceipt = {
      origin,
      server: clearing.self,
      txid: receiptTxid(txid),
      model: `0x${sha256}`,
      promptTokens: usage.prompt_tokens,
      completionTokens: usage.completion_tokens,
      credits,
      issuedAt: BigInt(Math.floor(Date.now() / 1000)),
    };
    try {
      return { receipt: federationReceiptToWire(receipt), signature: await clearing.sign(receipt) };
    } catch {
      return undefined;
    }
  }

  return async (scope: FastifyInstance) => {
    o.federation.on("peer.untrusted", onCutOff);
    scope.addHook("onClose", async () => {
      o.federation.off("peer.untrusted", onCutOff);
    });
    scope.get("/capacity", async (): Promise<CapacityResponse> => {
      // its models even while it takes no jobs: the origin then answers 503 (not here now), not 404
      return { inbound: o.settings.inbound, models: advertise(o.fleet, o.price) };
    });

    scope.post("/jobs/cancel", async (req) => {
      const peer = req.federationPeer as VerifiedPeer;
      const parsed = forwardedJobCancelSchema.safeParse(req.body);
      if (!parsed.success) throw new ApiError("invalid_request", describeZodError(parsed.error).message);
      // only the peer's own jobs: a txid is looked up under the verified sender
      const job = inFlight.get(peer.address)?.get(parsed.data.txid);
      if (!job) throw new ApiError("not_found", `no job of your site with transaction ${parsed.data.txid} runs here`);
      // charged no more than the origin charged its client; a job not started yet streamed nothing
      if (job.job) job.job.cancel("the origin site's client went away", parsed.data);
      else job.cancel.abort();
      return { cancelled: true };
    });

    // the nonce's write and the transaction id's claim go to the database together (one round trip less before the job starts)
    scope.post("/jobs", { config: { nonceLater: true } }, async (req, reply) => {
      const peer = req.federationPeer as VerifiedPeer;
      if (!o.settings.inbound) {
        o.metrics.federationRefused("inbound_off");
        throw new ApiError("federation_inbound_off", "this site takes no jobs from peer sites now; try another site or later");
      }
      const parsed = forwardedJobRequestSchema.safeParse(req.body);
      if (!parsed.success) throw new ApiError("invalid_request", describeZodError(parsed.error).message);
      const { txid, kind, generationLimit } = parsed.data;
      const body = (kind === "chat" ? chatCompletionRequestSchema : completionRequestSchema).safeParse(parsed.data.body);
      if (!body.success) {
        const { message, param } = describeZodError(body.error);
        throw new ApiError("invalid_request", message, { param: param ?? undefined });
      }
      const cap = o.settings.inboundCapPerPeer;
      const now = running.get(peer.address) ?? 0;
      if (cap !== undefined && now >= cap) {
        o.metrics.federationRefused("over_cap");
        throw new ApiError(
          "federation_peer_over_cap",
          `your site has ${now} jobs running here, the most this site takes from one peer; try again when one ends`,
        );
      }
      // counted before the first await, so that requests arriving together cannot all pass the cap
      const release = claimSlot(peer.address);
      const [fresh, begun] = await Promise.allSettled([req.federationFresh, transactions.begin(peer.address, txid)]);
      if (fresh.status === "rejected" || begun.status === "rejected") {
        release();
        // a replay that claimed the transaction id (its first request never did) leaves it to a real retry
        if (fresh.status === "rejected" && begun.status === "fulfilled" && begun.value.first) await transactions.forget(peer.address, txid);
        throw fresh.status === "rejected" ? fresh.reason : (begun as PromiseRejectedResult).reason;
      }
      const start = begun.value;
      if (!start.first) {
        release();
        if (start.result === null) {
          throw new ApiError("federation_transaction_running", `transaction ${txid} is running here already; it is not run twice`);
        }
        reply.header("content-type", FORWARDED_STREAM_TYPE);
        return start.result;
      }
      const gone = new AbortController();
      const cancel = new AbortController();
      const mine = inFlight.get(peer.address) ?? new Map();
      inFlight.set(peer.address, mine);
      const entry: { gone: AbortController; cancel: AbortController; job?: Job } = { gone, cancel };
      mine.set(txid, entry);
      const lines: string[] = [];
      let open = false;
      let over = false;
      const model = String(body.data.model);
      const ref = { direction: "in" as const, peer: peer.address, txid };
      const logFailed = (err: Error) => req.log.error({ err: err.message, txid }, "recording a forwarded job failed");
      /** the job's row: written beside the job's start, not before it; its updates wait for it */
      let logged: Promise<void> = Promise.resolve();
      const done = (
        status: "completed" | "failed" | "cancelled",
        last: ForwardedLine,
        usage?: { prompt_tokens: number; completion_tokens: number },
        signed?: SignedReceipt,
      ) => {
        if (over) return;
        over = true;
        release();
        mine.delete(txid);
        if (mine.size === 0 && inFlight.get(peer.address) === mine) inFlight.delete(peer.address);
        o.metrics.federatedJob(peer.address, "in", status);
        const text = forwardedLine(last);
        lines.push(text);
        transactions.finish(peer.address, txid, lines.join("")).catch(logFailed);
        void logged.then(() => log.finished(ref, status, usage, "error" in last ? last.error.message : undefined, signed).catch(logFailed));
        return text;
      };
      // awaits since the signature was checked: the peer may have been cut off meanwhile
      const refused = (e: ApiError) => {
        done("failed", { error: { message: e.message, retryable: false, status: e.status } });
        return e;
      };
      if (!o.federation.isTrusted(peer.address)) {
        throw refused(new ApiError("federation_untrusted_peer", "your site is no longer trusted here; nothing was run"));
      }
      let apiKey: ApiKeyInfo;
      try {
        apiKey = await keyOf(peer);
      } catch (err) {
        throw refused(new ApiError("internal_error", "the job could not start here", { cause: err }));
      }
      if (gone.signal.aborted) throw refused(new ApiError("federation_untrusted_peer", "your site was cut off here; nothing was run"));
      return new Promise<unknown>((resolve, reject) => {
        const write = (line: ForwardedLine) => {
          const text = forwardedLine(line);
          lines.push(text);
          reply.raw.write(text);
        };
        /** The answer's end line: what was charged for the job (completed, or cancelled by the origin), with the receipt for it. */
        const endWith = (status: "completed" | "cancelled", unit: string, usage: Usage) => {
          void signedReceipt(peer.address, txid, model, unit, usage).then((signed) => {
            const text = done(status, { end: usage, ...signed }, usage, signed);
            // the origin went away while the receipt was signed
            if (text === undefined) return resolve(undefined);
            if (!open) {
              reply.hijack();
              reply.raw.writeHead(200, { "content-type": FORWARDED_STREAM_TYPE });
            }
            reply.raw.end(text);
            resolve(undefined);
          });
        };
        /** the prompt tokens the node told before output began: told the origin after the first event */
        let prompted: number | undefined;
        const out: JobOutput = {
          open(_unit, data, tokens) {
            open = true;
            reply.hijack();
            reply.raw.socket?.setNoDelay(true);
            reply.raw.writeHead(200, { "content-type": FORWARDED_STREAM_TYPE, "cache-control": "no-cache" });
            write({ c: 1, d: data, t: typeof tokens === "number" ? tokens : [...(tokens ?? [])] });
            if (prompted !== undefined) write({ p: prompted });
          },
          prompted(promptTokens) {
            if (over) return;
            if (open) write({ p: promptTokens });
            else prompted = promptTokens;
          },
          chunk(data, tokens) {
            write({ c: 1, d: data, t: typeof tokens === "number" ? tokens : [...(tokens ?? [])] });
          },
          end(unit, usage) {
            endWith("completed", unit, usage);
          },
          cancelled(unit, usage) {
            // cut off, or the origin gone: it ended already
            if (over) return;
            if (usage) return endWith("cancelled", unit, usage);
            const text = done("cancelled", { error: { message: "the origin site cancelled the job", retryable: false } });
            if (!open) return reject(new ApiError("invalid_request", "the origin site cancelled the job before it began"));
            reply.raw.end(text);
            resolve(undefined);
          },
          result() {
            // a forwarded job always streams
            reject(new ApiError("internal_error", "a forwarded job answered as a whole"));
          },
          fail(err) {
            const text = done("failed", { error: { message: err.message, retryable: err.status >= 500, status: err.status } });
            if (!open) return reject(err);
            reply.raw.end(text);
            resolve(undefined);
          },
        };
        reply.raw.on("close", () => {
          if (reply.raw.writableFinished) return;
          done("cancelled", { error: { message: "the origin site went away", retryable: false } });
          gone.abort();
          resolve(undefined);
        });
        // cut off while it runs: the job is cancelled (its signal), and the origin told so
        gone.signal.addEventListener(
          "abort",
          () => {
            if (over) return;
            const message = (gone.signal.reason as Error).message;
            const text = done("cancelled", { error: { message, retryable: true } });
            if (!open) return reject(new ApiError("federation_untrusted_peer", message));
            reply.raw.end(text);
            resolve(undefined);
          },
          { once: true },
        );
        logged = log.started({ ...ref, jobId: "", model }).catch(logFailed);
        o.jobs
          .submit(
            {
              kind,
              body: { ...body.data, model, stream: true, stream_options: null, max_tokens: generationLimit },
              apiKey,
              signal: AbortSignal.any([gone.signal, cancel.signal]),
              log: req.log,
            },
            out,
          )
          .then((job) => {
            entry.job = job;
            void logged.then(() => log.jobId(ref, job.id).catch(logFailed));
          })
          .catch((err: unknown) => {
            const e = err instanceof ApiError ? err : new ApiError("internal_error", "the job could not start here", { cause: err });
            done("failed", { error: { message: e.message, retryable: e.status >= 500, status: e.status } });
            reject(e);
          });
      });
    });
  };
}
