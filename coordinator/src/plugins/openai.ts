/**
 * The OpenAI-compatible API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, streaming
 * and not. Requests are validated by their route schemas (requestValidation.ts); the handlers
 * hand them to a job (jobs/job.ts: scheduling, retries, credits, rows, receipts); the job's
 * output becomes the response (sse.ts). A client that goes away cancels its job. The plugin
 * needs the openapi plugin's validator compiler (zod schemas) registered before it.
 */
import { ApiError, chatCompletionRequestSchema, completionRequestSchema, type JobKind } from "@sharedllm/protocol";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { ApiKeyInfo, ApiKeyVerifier } from "../apiKeys.js";
import type { KnownModel } from "../catalogue.js";
import { bearerToken } from "../credentials.js";
import type { Peers } from "../federation/peers.js";
import type { Fleet } from "../fleet.js";
import { type JobRequest, type Jobs, unknownModel } from "../jobs/jobs.js";
import { jobResponse } from "./sse.js";

export interface OpenAIPluginOptions {
  jobs: Jobs;
  keys: ApiKeyVerifier;
  fleet: Fleet;
  /** models ever served here (404 vs 503) */
  knownModels: ReadonlyMap<string, KnownModel>;
  /** trusted peer sites: the models they serve are listed for keys whose jobs may go there */
  peers?: Peers;
}

declare module "fastify" {
  interface FastifyRequest {
    apiKey?: ApiKeyInfo;
  }
}

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

  app.get("/v1/models", async (req) => {
    const served = new Map<string, number>();
    for (const n of o.fleet.all()) for (const id of n.models.keys()) served.set(id, (served.get(id) ?? 0) + 1);
    // a model only peer sites serve: no node here (0), listed for keys whose jobs may leave the site
    if (req.apiKey?.policy === "any") for (const id of o.peers?.models() ?? []) if (!served.has(id)) served.set(id, 0);
    return {
      object: "list",
      data: [...served].sort(([a], [b]) => a.localeCompare(b)).map(([id, nodes]) => modelObject(id, nodes)),
    };
  });

  app.get<{ Params: { model: string } }>("/v1/models/:model", async (req) => {
    const nodes = o.fleet.all().filter((n) => n.models.has(req.params.model)).length;
    const remote = req.apiKey?.policy === "any" && o.peers?.models().has(req.params.model);
    if (!nodes && !remote && !o.knownModels.has(req.params.model)) throw unknownModel(o.fleet, req.params.model);
    return modelObject(req.params.model, nodes);
  });

  // the bodies are validated before the handler runs (requestValidation.ts): req.body is the parsed request
  app.post("/v1/chat/completions", { schema: { body: chatCompletionRequestSchema } }, (req, reply) => generate("chat", req, reply));
  app.post("/v1/completions", { schema: { body: completionRequestSchema } }, (req, reply) => generate("completion", req, reply));

  async function generate(kind: JobKind, req: FastifyRequest, reply: FastifyReply) {
    const gone = new AbortController();
    return new Promise<unknown>((resolve, reject) => {
      reply.raw.on("close", () => {
        if (reply.raw.writableFinished) return;
        gone.abort();
        resolve(undefined);
      });
      const request: JobRequest = {
        kind,
        body: req.body as JobRequest["body"],
        apiKey: req.apiKey as ApiKeyInfo,
        signal: gone.signal,
        log: req.log,
      };
      o.jobs.submit(request, jobResponse(reply, resolve, reject)).catch(reject);
    });
  }
}

function modelObject(id: string, nodes: number) {
  return { id, object: "model", created: 0, owned_by: "sharedllm", nodes };
}
