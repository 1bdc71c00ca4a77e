/**
 * One error shape for every response: `{ error: { message, type, code, param } }`.
 * ApiErrors carry their own status; fastify's own errors (bad JSON, wrong media
 * type, body too large) are mapped to the catalog; anything else is an internal
 * error whose cause goes to the log, never to the client.
 */
import { ApiError, errorBody } from "@sharedllm/protocol";
import type { FastifyError, FastifyInstance } from "fastify";
import fp from "fastify-plugin";

export const errorsPlugin = fp(
  async (app: FastifyInstance) => {
    app.setErrorHandler((err: FastifyError | ApiError, req, reply) => {
      if (err instanceof ApiError) return reply.code(err.status).send(err.toBody());
      const e = err as FastifyError;
      if (e.code === "FST_ERR_CTP_INVALID_JSON_BODY" || e.code === "FST_ERR_CTP_EMPTY_JSON_BODY" || err instanceof SyntaxError) {
        return reply.code(400).send(errorBody("invalid_json", `the request body is not valid JSON: ${e.message}`));
      }
      if (e.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
        return reply.code(415).send(errorBody("unsupported_media_type", "send the body as application/json"));
      }
      if (e.code === "FST_ERR_CTP_BODY_TOO_LARGE") {
        return reply.code(413).send(errorBody("payload_too_large", "the request body is too large"));
      }
      if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
        return reply.code(e.statusCode).send(errorBody("invalid_request", e.message));
      }
      req.log.error({ err }, "unhandled error");
      return reply.code(500).send(errorBody("internal_error", "internal error; the coordinator log has the details"));
    });
    app.setNotFoundHandler((req, reply) => {
      reply.code(404).send(errorBody("not_found", `no route ${req.method} ${req.url.split("?")[0]}`));
    });
  },
  { name: "errors" },
);
