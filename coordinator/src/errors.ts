/**
 * One error shape for every response: `{ error: { message, type, code, param } }`.
 * ApiErrors carry their own status; fastify's own errors (bad JSON, wrong media
 * type, body too large) are mapped to the catalog; anything else is an internal
 * error whose cause goes to the log, never to the client.
 */
import { ApiError, errorBody } from "@sharedllm/protocol";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";

/** Longer than any id, address or model name a path holds; fastify's default, 100, answered 414 before the handler. */
const MAX_PARAM_LENGTH = 2048;

/**
 * Server options for what fastify's router refuses before any handler or error handler runs (a
 * malformed percent-encoding, a path parameter over MAX_PARAM_LENGTH): answered in the catalog's
 * shape, not fastify's own `{ error, code, message, statusCode }`. A shorter parameter reaches its
 * handler, which answers its documented error.
 */
export const routerErrorOptions = {
  routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
  frameworkErrors(err: FastifyError, req: FastifyRequest, reply: FastifyReply) {
    if (err.code === "FST_ERR_BAD_URL")
      return reply.code(400).send(errorBody("invalid_request", "the URL is malformed: check its percent-encoding"));
    if (err.code === "FST_ERR_MAX_PARAM_LENGTH") {
      return reply.code(400).send(errorBody("invalid_request", `a path parameter is over ${MAX_PARAM_LENGTH} characters`));
    }
    req.log.error({ err }, "unhandled router error");
    return reply.code(500).send(errorBody("internal_error", "internal error; the coordinator log has the details"));
  },
};

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
