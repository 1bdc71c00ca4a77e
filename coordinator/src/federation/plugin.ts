/**
 * The federation plugin: `GET /v1/federation` (public: this site's identity and its peers with
 * their trust path, no secrets), and the signed routes under FEDERATION_PREFIX, where every
 * request is verified before its handler runs (`req.federationPeer` is the verified sender) and
 * refused otherwise with a status and code per reason (docs/federation.md). `POST
 * /federation/v1/ping` echoes; later features add their signed routes through `routes`.
 */
import { ApiError, type ErrorCode, FEDERATION_PREFIX } from "@sharedllm/protocol";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { type Federation, type ForwardingView, REPLAYED, type VerifiedPeer } from "./federation.js";
import type { Refusal } from "./signature.js";

declare module "fastify" {
  interface FastifyRequest {
    /** on signed federation routes: the peer coordinator the request came from */
    federationPeer?: VerifiedPeer;
    /**
     * on a signed route with `config: { nonceLater: true }`: settles once the request's nonce is
     * known unused, and rejects (a replay) otherwise; the handler acts on nothing before it
     */
    federationFresh?: Promise<void>;
  }
  interface FastifyContextConfig {
    /** the route overlaps the nonce's write with its own first one (see federationFresh) */
    nonceLater?: boolean;
  }
}

/** The error code of each refusal; its status comes from the catalog (401 or 403). */
export const REFUSAL_CODES: Record<Refusal, ErrorCode> = {
  missing: "federation_signature_missing",
  bad_signature: "federation_signature_invalid",
  digest_mismatch: "federation_digest_mismatch",
  stale: "federation_stale_request",
  replayed: "federation_replayed",
  key_unknown: "federation_key_unknown",
  unknown_peer: "federation_unknown_peer",
  untrusted_peer: "federation_untrusted_peer",
  key_expired: "federation_key_expired",
  wrong_destination: "federation_wrong_destination",
};

export interface FederationPluginOptions {
  federation: Federation;
  /** more signed routes, registered under FEDERATION_PREFIX behind the verification */
  routes?: Array<(scope: FastifyInstance) => void | Promise<void>>;
  /** forwarded jobs' part of `GET /v1/federation` */
  forwarding?: ForwardingView;
}

export async function federationPlugin(app: FastifyInstance, o: FederationPluginOptions): Promise<void> {
  const f = o.federation;
  app.get("/v1/federation", async () => f.view(o.forwarding));

  await app.register(
    async (scope) => {
      // the signature covers the body's exact bytes: keep them, parse once verified
      scope.addContentTypeParser("application/json", { parseAs: "buffer" }, (_req, body, done) => done(null, body));
      scope.decorateRequest("federationPeer", undefined);
      scope.decorateRequest("federationFresh", undefined);
      const refusal = (req: FastifyRequest, reason: Refusal, detail: string) => {
        // the claimed origin is a stranger's header: logged as a string of at most an address's length
        const origin = String(req.headers["sharedllm-origin"] ?? "").slice(0, 42);
        req.log.warn({ reason, origin, ip: req.ip }, "federation request refused");
        return new ApiError(REFUSAL_CODES[reason], `federation request refused: ${detail}`);
      };
      // what the headers alone refuse (unsigned, a stranger, stale) is refused before the body is read
      scope.addHook("onRequest", async (req) => {
        const early = f.precheck({ method: req.method, authority: req.headers.host ?? "", target: req.url, headers: req.headers });
        if (early) throw refusal(req, early.reason, early.detail);
      });
      scope.addHook("preHandler", async (req) => {
        const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
        const nonceLater = req.routeOptions.config.nonceLater === true;
        const refuse = (reason: Refusal, detail: string) => refusal(req, reason, detail);
        const v = await f.verify(
          { method: req.method, authority: req.headers.host ?? "", target: req.url, headers: req.headers, body: raw },
          Date.now(),
          nonceLater,
        );
        if (!v.ok) throw refuse(v.reason, v.detail);
        req.federationPeer = v.peer;
        if (nonceLater) {
          req.federationFresh = v.fresh.then((fresh) => {
            if (!fresh) throw refuse("replayed", REPLAYED);
          });
          // awaited by the handler; a handler that refused the request first leaves it unawaited
          req.federationFresh.catch(() => undefined);
        }
        try {
          req.body = raw.length ? JSON.parse(raw.toString("utf8")) : undefined;
        } catch {
          throw new ApiError("invalid_json", "the request body is not valid JSON");
        }
      });
      // an echo: proves both ends agree on keys, trust and the signature base
      scope.post("/ping", async (req) => ({ pong: true, from: req.federationPeer?.address, to: f.address, body: req.body ?? null }));
      for (const add of o.routes ?? []) await add(scope);
    },
    { prefix: FEDERATION_PREFIX },
  );
}
