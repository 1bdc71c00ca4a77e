/**
 * The operator's view of audits (docs/verification.md): `GET /v1/audits` shows the rates, each
 * node's record and recent audits with the evidence of each failure; `POST
 * /v1/audits/nodes/:node/clear` ends a node's suspicion and exclusion. Both take an operator key
 * (an API key no wallet owns).
 */
import { ApiError, type AuditsResponse } from "@sharedllm/protocol";
import type { FastifyInstance } from "fastify";
import { isAddress } from "viem";
import type { ApiKeyVerifier } from "../apiKeys.js";
import type { Audits } from "../audits/audits.js";
import { bearerToken } from "../credentials.js";

export interface AuditsPluginOptions {
  audits: Audits;
  keys: ApiKeyVerifier;
}

export async function auditsPlugin(app: FastifyInstance, o: AuditsPluginOptions): Promise<void> {
  app.addHook("onRequest", async (req) => {
    const token = bearerToken(req.headers.authorization ?? "");
    if (!token) throw new ApiError("missing_api_key", "audits are the operator's: send an operator key as 'Authorization: Bearer sk-...'");
    const key = await o.keys.verify(token);
    if (!key) throw new ApiError("invalid_api_key", "the API key is not valid (it may have been revoked)");
    if (key.owner) throw new ApiError("permission_denied", "audits are the operator's: this key belongs to a wallet");
  });

  app.get<{ Querystring: { node?: string; limit?: string } }>("/v1/audits", async (req): Promise<AuditsResponse> => {
    const { node, limit } = req.query;
    if (node !== undefined && !isAddress(node)) throw new ApiError("invalid_request", "node must be an address", { param: "node" });
    // digits only, as documented: Number() would also take "1e2", "0x10" and " 5"
    const n = limit === undefined ? 50 : /^\d+$/.test(limit) ? Number(limit) : Number.NaN;
    if (!Number.isInteger(n) || n < 1 || n > 500) throw new ApiError("invalid_request", "limit must be 1 to 500", { param: "limit" });
    return o.audits.overview({ node, limit: n });
  });

  app.post<{ Params: { node: string } }>("/v1/audits/nodes/:node/clear", async (req) => {
    if (!isAddress(req.params.node)) throw new ApiError("invalid_request", "not an address", { param: "node" });
    if (!(await o.audits.clear(req.params.node))) throw new ApiError("not_found", "this node has no audit record here");
    return { cleared: req.params.node.toLowerCase() };
  });
}
