/**
 * The OpenAI-compatible API: `/v1/models`, `/v1/chat/completions`,
 * `/v1/completions`, streaming and not. A job goes to a node over its control
 * channel; streamed chunks are relayed to the client as they arrive, unchanged.
 * A job that fails on a node before anything reached the client is retried on
 * another node; a client that goes away cancels the generation on the node.
 */
import { randomUUID } from "node:crypto";
import type { ServerResponse } from "node:http";
import {
  ApiError,
  chatCompletionRequestSchema,
  completionRequestSchema,
  describeZodError,
  engineRequest,
  errorBody,
  type JobKind,
  type JobStart,
  type ReceiptRequest,
  requestedMaxTokens,
  type Usage,
  usageSchema,
} from "@sharedllm/protocol";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { z } from "zod";
import type { ApiKeyInfo, ApiKeyVerifier } from "../apiKeys.js";
import type { KnownModel } from "../catalogue.js";
import { bearerToken } from "../credentials.js";
import type { Db } from "../db/database.js";
import type { JobStatus } from "../db/schema.js";
import type { Fleet, JobSink, SchedulingPolicy } from "../fleet.js";
import { jobCost, type Metering, promptTokenBound } from "../ledger/metering.js";
import type { Receipts } from "../ledger/receipts.js";
import { meteredUsage, RelayedText } from "../ledger/usage.js";
import type { Metrics } from "../metrics.js";
import { withRequiredFields } from "../openaiFields.js";

export interface OpenAIPluginOptions {
  db: Db;
  fleet: Fleet;
  keys: ApiKeyVerifier;
  metrics: Metrics;
  /** extra say over where each job may run */
  policy?: SchedulingPolicy;
  /** models ever served here (404 vs 503), with where nodes can pull them from */
  knownModels: ReadonlyMap<string, KnownModel>;
  /** how long a request waits for a model a node is loading on demand; default 3 min */
  loadWaitMs?: number;
  /** attempts on different nodes before giving up */
  maxAttempts?: number;
  /** credits: wallet-bound keys pay for their jobs, serving nodes get receipts; absent = free */
  ledger?: { metering: Metering; receipts: Receipts };
}

/**
 * The generation limit of a request without max_tokens. It is the coordinator's, not a node's
 * word (a node that claimed a huge context would make every such request unaffordable).
 */
const DEFAULT_MAX_TOKENS = 4096;

declare module "fastify" {
  interface FastifyRequest {
    apiKey?: ApiKeyInfo;
  }
}

/** Response header naming the node that served the request. */
export const NODE_HEADER = "x-sharedllm-node";

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  connection: "keep-alive",
  "x-accel-buffering": "no",
};

export async function openaiPlugin(app: FastifyInstance, o: OpenAIPluginOptions): Promise<void> {
  app.addHook("onRequest", async (req) => {
    const header = req.headers.authorization;
    if (!header) {
      throw new ApiError("missing_api_key", "no API key: send it as 'Authorization: Bearer sk-...' (sharedllm up prints one)");
    }
    const token = bearerToken(header);
    const key = token ? await o.keys.verify(token) : undefined;
    if (!key) throw new ApiError("invalid_api_key", "the API key is not valid (it may have been revoked)");
    req.apiKey = key;
  });

  app.get("/v1/models", async () => {
    const served = new Map<string, number>();
    for (const n of o.fleet.list()) for (const id of n.models.keys()) served.set(id, (served.get(id) ?? 0) + 1);
    return {
      object: "list",
      data: [...served].sort(([a], [b]) => a.localeCompare(b)).map(([id, nodes]) => modelObject(id, nodes)),
    };
  });

  app.get<{ Params: { model: string } }>("/v1/models/:model", async (req) => {
    const nodes = o.fleet.list().filter((n) => n.models.has(req.params.model)).length;
    if (!nodes && !o.knownModels.has(req.params.model)) throw unknownModel(req.params.model);
    return modelObject(req.params.model, nodes);
  });

  app.post("/v1/chat/completions", (req, reply) => generate("chat", chatCompletionRequestSchema, req, reply));
  app.post("/v1/completions", (req, reply) => generate("completion", completionRequestSchema, req, reply));

  /**
   * A model known here but served by no node now: an idle node with room is asked
   * to pull and load it, and the request waits for it (or the client gives up).
   */
  async function loadOnDemand(model: string, req: FastifyRequest): Promise<void> {
    const known = o.knownModels.get(model);
    if (!known) throw unknownModel(model);
    if (!known.source) {
      throw new ApiError(
        "no_capacity",
        `no node serves "${model}" now, and it is not a model this coordinator loads on demand; try again later`,
      );
    }
    const loader = o.fleet.requestLoad(known);
    if (!loader) {
      throw new ApiError("no_capacity", `no node serves "${model}" now and none has room to load it; try again later`);
    }
    req.log.info({ model, nodeId: loader.id }, "model in demand: a node is loading it");
    const deadline = Date.now() + (o.loadWaitMs ?? 180_000);
    while (!o.fleet.servesModel(model)) {
      if (req.socket.destroyed) throw new ApiError("timeout", "the client went away while the model was loading");
      if (o.fleet.get(loader.id) !== loader || loader.loading !== model) {
        throw new ApiError("no_capacity", `loading "${model}" on a node failed; try again later`);
      }
      if (Date.now() > deadline) throw new ApiError("timeout", `"${model}" is still loading; try again shortly`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  function unknownModel(model: string) {
    const served = [...new Set(o.fleet.list().flatMap((n) => [...n.models.keys()]))];
    return new ApiError(
      "model_not_found",
      `model "${model}" does not exist here; available: ${served.join(", ") || "none (no node is connected)"}`,
      { param: "model" },
    );
  }

  async function generate(kind: JobKind, schema: z.ZodType<Record<string, unknown>>, req: FastifyRequest, reply: FastifyReply) {
    if (typeof req.body !== "object" || req.body === null || Array.isArray(req.body)) {
      throw new ApiError("invalid_request", "the request body must be a JSON object");
    }
    const parsed = schema.safeParse(req.body);
    if (!parsed.success) {
      const { message, param } = describeZodError(parsed.error);
      throw new ApiError("invalid_request", message, { param: param ?? undefined });
    }
    const body = parsed.data as { model: string; stream?: boolean; stream_options?: { include_usage?: boolean } | null };
    if (!o.fleet.servesModel(body.model)) await loadOnDemand(body.model, req);

    const jobId = `job_${randomUUID()}`;
    const stream = body.stream === true;
    // the engine generates at most what the credits were reserved for
    const generationLimit = requestedMaxTokens(parsed.data as never) ?? DEFAULT_MAX_TOKENS;
    const job: JobStart = {
      type: "job.start",
      jobId,
      kind,
      stream,
      includeUsage: body.stream_options?.include_usage === true,
      request: engineRequest(parsed.data as never, generationLimit),
    };
    const promptTokens = promptTokenBound(parsed.data);
    /** what was relayed to the client bounds what the job is charged */
    const relayed = new RelayedText();
    const metered = (reported: Usage) =>
      meteredUsage(reported, {
        promptTokens,
        generationLimit,
        relayedBytes: relayed.bytes,
        stop: (parsed.data as { stop?: string | string[] | null }).stop,
      });
    const apiKey = req.apiKey as ApiKeyInfo;
    let nodeId: string | null = null;
    let modelSha256: string | undefined;

    // a wallet-bound key pays: hold the worst case now (402 before anything runs), charge the actual usage at the end
    const payer = o.ledger && apiKey.owner ? { ...o.ledger, address: apiKey.owner as `0x${string}` } : undefined;
    const price = payer?.metering.price(body.model);
    let hold = 0n;
    if (payer && price) {
      hold = jobCost(price, promptTokens, generationLimit);
      await payer.metering.reserve(payer.address, jobId, hold);
    }
    /**
     * Charges a completed job (at most its hold) or releases the hold; then asks the node for its
     * receipt. A charge that fails releases the hold instead: no path leaves it held.
     */
    const settleCredits = async (status: JobStatus, usage?: Usage) => {
      if (!payer || !price) return;
      if (status !== "completed" || !usage) return payer.metering.release(payer.address, jobId, hold);
      // a split model pays every member by the layers it served; a solo node gets it all
      const split = nodeId ? o.fleet.get(nodeId)?.cluster : undefined;
      const owed = (charged: bigint) =>
        nodeId && modelSha256 && charged > 0n
          ? {
              jobId,
              modelSha256,
              promptTokens: usage.prompt_tokens,
              completionTokens: usage.completion_tokens,
              credits: charged,
              via: split?.length ? nodeId : undefined,
              members: split?.length
                ? split.map((m) => ({ node: m.nodeId as `0x${string}`, shareBps: m.shareBps }))
                : [{ node: nodeId as `0x${string}`, shareBps: 10_000 }],
            }
          : undefined;
      let requests: ReceiptRequest[];
      try {
        ({ recorded: requests } = await payer.metering.charge(
          payer.address,
          jobId,
          hold,
          jobCost(price, usage.prompt_tokens, usage.completion_tokens),
          async (tx, charged) => {
            const job = owed(charged);
            return job ? payer.receipts.propose(tx, job) : [];
          },
        ));
      } catch (err) {
        await payer.metering.release(payer.address, jobId, hold);
        throw err;
      }
      payer.receipts.send(requests);
    };
    // The running row is written once the first token has left for the client, so
    // the embedded database's work stays off the time to first token: the response
    // flushes its first write at the end of the current tick, and PGlite's work
    // (synchronous, on this thread) would run before that if it started in a microtask.
    // The final state is written (upserted) before the client hears that the job is done.
    let started: Promise<unknown> | undefined;
    const recordStart = () => {
      started ??= new Promise((r) => setImmediate(r))
        .then(() =>
          o.db
            .insertInto("jobs")
            .values({ id: jobId, kind, model: body.model, api_key_id: apiKey.id, node_id: nodeId, status: "running", stream })
            .execute(),
        )
        .catch((err) => req.log.error({ err, jobId }, "recording job start failed"));
    };
    const finish = async (status: JobStatus, usage?: Usage, error?: string) => {
      try {
        o.metrics.jobFinished(body.model, status, usage);
        await started;
        const final = {
          status,
          node_id: nodeId,
          prompt_tokens: usage?.prompt_tokens ?? null,
          completion_tokens: usage?.completion_tokens ?? null,
          error: error ?? null,
          finished_at: new Date(),
        };
        await o.db
          .insertInto("jobs")
          .values({ id: jobId, kind, model: body.model, api_key_id: apiKey.id, stream, ...final })
          .onConflict((c) => c.column("id").doUpdateSet(final))
          .execute();
      } finally {
        await settleCredits(status, usage);
      }
    };

    const raw = reply.raw;
    let settled = false;
    let headersSent = false;
    const tried = new Set<string>();
    const maxAttempts = o.maxAttempts ?? 3;

    return new Promise<unknown>((resolve, reject) => {
      const fail = (err: ApiError) => {
        settled = true;
        finish("failed", undefined, err.message).then(
          () => reject(err),
          () => reject(err),
        );
      };
      const onClientGone = () => {
        if (settled) return;
        settled = true;
        o.fleet.cancel(jobId);
        finish("cancelled", undefined, "client disconnected").catch((err) => req.log.error({ err }, "recording job failed"));
        resolve(undefined);
      };
      raw.on("close", () => {
        if (!raw.writableFinished) onClientGone();
      });

      const sink: JobSink = {
        chunk(data) {
          // chunks belong to streams; a node that sends them for a non-streaming job is ignored
          if (settled || !stream) return;
          relayed.addChunk(data);
          if (!headersSent) {
            headersSent = true;
            reply.hijack();
            raw.socket?.setNoDelay(true);
            raw.writeHead(200, { ...SSE_HEADERS, [NODE_HEADER]: nodeId ?? "" });
            raw.write(`data: ${data}\n\n`);
            recordStart();
            return;
          }
          writeEvent(raw, `data: ${data}\n\n`);
        },
        end(reported) {
          if (settled) return;
          settled = true;
          finish("completed", metered(reported)).then(
            () => {
              if (!headersSent) {
                reply.hijack();
                raw.writeHead(200, { ...SSE_HEADERS, [NODE_HEADER]: nodeId ?? "" });
              }
              raw.end("data: [DONE]\n\n");
              resolve(undefined);
            },
            (err) => {
              req.log.error({ err }, "recording job failed");
              raw.end(`data: ${JSON.stringify(errorBody("internal_error", "the coordinator could not record this job"))}\n\n`);
              resolve(undefined);
            },
          );
        },
        result(resBody) {
          if (settled) return;
          // a response whose counts are not whole token numbers is the node's failure; nothing reached the client
          const reported = usageSchema.safeParse(resBody.usage);
          if (!reported.success) return sink.error({ message: "the node reported malformed usage", retryable: true });
          relayed.addBody(resBody);
          const usage = metered(reported.data);
          resBody.usage = usage;
          withRequiredFields(resBody);
          settled = true;
          finish("completed", usage).then(
            () => {
              reply.header(NODE_HEADER, nodeId);
              resolve(resBody);
            },
            (err) => {
              req.log.error({ err }, "recording job failed");
              reject(new ApiError("internal_error", "the coordinator could not record this job"));
            },
          );
        },
        error(e) {
          if (settled) return;
          if (!headersSent && e.retryable && tried.size < maxAttempts) {
            req.log.warn({ jobId, nodeId, reason: e.message }, "job failed on a node before output; trying another");
            return attempt();
          }
          const err =
            e.status !== undefined && e.status < 500
              ? new ApiError("invalid_request", e.message)
              : new ApiError("node_failed", `generation failed on the serving node: ${e.message}`);
          if (!headersSent) return fail(err);
          settled = true;
          finish("failed", undefined, err.message).catch((dbErr) => req.log.error({ err: dbErr }, "recording job failed"));
          raw.end(`data: ${JSON.stringify(err.toBody())}\n\n`);
          resolve(undefined);
        },
      };

      const attempt = (): void => {
        const t0 = performance.now();
        const policy = o.policy;
        const node = o.fleet.pick(body.model, tried, policy && ((n) => policy({ model: body.model, apiKeyId: apiKey.id }, n)));
        o.metrics.scheduled((performance.now() - t0) / 1000);
        if (!node) {
          fail(
            tried.size
              ? new ApiError("node_failed", `every node serving "${body.model}" failed this request; try again shortly`)
              : new ApiError("no_capacity", `no node serving "${body.model}" has capacity right now; try again shortly`),
          );
          return;
        }
        tried.add(node.id);
        nodeId = node.id;
        modelSha256 = node.models.get(body.model)?.sha256;
        o.fleet.dispatch(node, job, sink);
        if (!stream) recordStart();
      };
      attempt();
    });
  }
}

/**
 * A streamed event after the first, written straight to the socket as one HTTP/1.1
 * chunk. The response's own write() corks the socket and sends four buffers on the
 * next tick, which costs more CPU per token than the token's bytes; on a machine
 * whose cores llama-server is using, that CPU is taken from decoding. The response
 * itself still sends the headers, the first event and the last chunk, in order on
 * the same socket.
 */
function writeEvent(raw: ServerResponse, event: string): void {
  const socket = raw.socket;
  if (!socket || !raw.chunkedEncoding) {
    raw.write(event);
    return;
  }
  socket.write(`${Buffer.byteLength(event).toString(16)}\r\n${event}\r\n`);
}

function modelObject(id: string, nodes: number) {
  return { id, object: "model", created: 0, owned_by: "sharedllm", nodes };
}
