/**
 * Request validation from the routes' own zod schemas, answering the closed catalog's errors:
 * a body that is not a JSON object, or that its schema refuses, is a 400 `invalid_request` whose
 * message and `param` name the first field at fault (describeZodError), the same as the handlers
 * answered when they parsed bodies themselves. The parsed value replaces the request's part.
 *
 * Schemas the openapi plugin attached from routeDocs.ts only document: those routes still
 * validate in their handlers (their own messages, raw bodies kept for signatures), so they and
 * any non-zod schema pass through untouched, as do headers (never validated by schema here).
 */
import { ApiError, describeZodError } from "@sharedllm/protocol";
import type { FastifySchemaCompiler } from "fastify";
import { z } from "zod";
import { ROUTE_DOCS } from "./routeDocs.js";

export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, method, url, httpPart }) => {
  const documentedOnly = ROUTE_DOCS[`${method} ${url}`]?.[httpPart as "body" | "params" | "querystring"] === schema;
  if (documentedOnly || httpPart === "headers" || !(schema instanceof z.ZodType)) return (value) => ({ value });
  return (value) => {
    if (httpPart === "body" && (typeof value !== "object" || value === null || Array.isArray(value))) {
      return { error: new ApiError("invalid_request", "the request body must be a JSON object") };
    }
    const parsed = schema.safeParse(value);
    if (parsed.success) return { value: parsed.data };
    const { message, param } = describeZodError(parsed.error);
    return { error: new ApiError("invalid_request", message, { param: param ?? undefined }) };
  };
};
