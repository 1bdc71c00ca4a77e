/**
 * The documented shape of every public route, keyed by `METHOD url`: request schemas (the zod
 * schemas of protocol/ the handlers validate with), responses, the errors of the closed catalog
 * each route can answer, and whether it takes a bearer token. plugins/openapi.ts attaches these
 * to the routes as they are registered; a route that is neither here nor in UNDOCUMENTED is left
 * out of the spec, and the openapi test fails for it.
 *
 * The request schemas here document only: those routes' handlers validate as they always did.
 * A route that validates through its schema declares it itself (requestValidation.ts).
 */
import {
  browserRegisterRequestSchema,
  claimItemSchema,
  ERROR_CATALOG,
  type ErrorCode,
  escrowItemSchema,
  federationItemSchema,
  historyPageSchema,
  historyStatusSchema,
  purchaseItemSchema,
  registerRequestSchema,
  settlementItemSchema,
  transactionHistorySchema,
  usageSchema,
} from "@sharedllm/protocol";
import { SITE_AUTH_HEADERS } from "@sharedllm/protocol/node";
import { z } from "zod";
import { loginSchema, newKeySchema } from "./plugins/accounts.js";

/** A route's documentation as fastify's `schema` route option carries it (zod schemas, turned into JSON Schema for the spec). */
export interface RouteDoc {
  summary: string;
  description?: string;
  tags: string[];
  security?: Array<Record<string, string[]>>;
  body?: z.ZodType;
  querystring?: z.ZodType;
  params?: z.ZodType;
  headers?: z.ZodType;
  response: Record<string, unknown>;
}

/** The body of every error: `{ error: { message, type, code, param } }`, with the codes a route can answer. */
export function errorBodySchema(codes: readonly ErrorCode[]) {
  return z.object({
    error: z.object({
      message: z.string().describe("what went wrong and what to do about it"),
      type: z.enum([...new Set(codes.map((c) => ERROR_CATALOG[c].type))] as [string, ...string[]]),
      code: z.enum(codes as [ErrorCode, ...ErrorCode[]]),
      param: z.string().nullable().describe("the request field at fault, when there is one"),
    }),
  });
}

/** Response entries for these error codes, one per HTTP status; every route may also answer internal_error. */
export function errorResponses(codes: readonly ErrorCode[]): Record<string, unknown> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const c of [...codes, "internal_error" as const]) {
    const s = ERROR_CATALOG[c].status;
    byStatus.set(s, [...(byStatus.get(s) ?? []), c]);
  }
  return Object.fromEntries(
    [...byStatus].map(([status, cs]) => [
      String(status),
      { description: `error: ${cs.join(", ")}`, content: { "application/json": { schema: errorBodySchema(cs) } } },
    ]),
  );
}

const json = (description: string, schema: z.ZodType) => ({ description, content: { "application/json": { schema } } });

/** An object the portal reads; its TypeScript type in protocol/src/responses.ts is the full contract. */
const view = (name: string) => z.looseObject({}).describe(`see ${name} in protocol/src/responses.ts`);

const bearer = [{ bearer: [] }];
const auth: ErrorCode[] = ["missing_api_key", "invalid_api_key"];
/** what any route taking a JSON body may answer for the body itself */
const bodyErrors: ErrorCode[] = ["invalid_json", "payload_too_large", "unsupported_media_type"];
/** as the handlers take it (viem isAddress): a pattern cannot say that mixed case must be a valid EIP-55 checksum */
const address = z
  .string()
  .regex(/^0x[0-9a-fA-F]{40}$/)
  .describe("an address: all lower case, all upper case, or mixed case with a valid EIP-55 checksum");

export const healthSchema = z.object({
  status: z.literal("ok"),
  credits: z.boolean().describe("whether requests are paid in credits on a chain (then /v1/ledger says which)"),
  nodes: z.number().int(),
  models: z.array(z.string()),
});

export const modelSchema = z.object({
  id: z.string(),
  object: z.literal("model"),
  created: z.number().int(),
  owned_by: z.string(),
  nodes: z.number().int().describe("nodes of this site serving it now (0: only peer sites do)"),
});

export const modelListSchema = z.object({ object: z.literal("list"), data: z.array(modelSchema) });

const completionResponse = z.looseObject({
  id: z.string(),
  object: z.string(),
  created: z.number().int(),
  model: z.string(),
  choices: z.array(z.looseObject({ index: z.number().int(), finish_reason: z.string().nullable() })),
  usage: usageSchema.optional(),
});

/**
 * A text/event-stream response's schema describes each event, not the stream: OpenAPI 3.1 says
 * nothing of streams, and tools (schemathesis) read it as 3.2's `itemSchema`, an event's fields.
 */
const sse = {
  schema: z
    .looseObject({ data: z.string().describe("a chunk (JSON), or [DONE] after the last") })
    .describe("each server-sent event (when the request sets stream: true): `data: {chunk}`, then `data: [DONE]`"),
};

/** The generation routes declare their bodies themselves (plugins/openai.ts), validated by them. */
const generation = (summary: string): RouteDoc => ({
  summary,
  tags: ["OpenAI"],
  security: bearer,
  response: {
    200: {
      description: "the completion; with stream: true, a text/event-stream of chunks",
      content: { "application/json": { schema: completionResponse }, "text/event-stream": sse },
    },
    ...errorResponses([
      ...bodyErrors,
      "invalid_request",
      ...auth,
      "insufficient_credits",
      "model_not_found",
      "node_failed",
      "no_capacity",
      "timeout",
    ]),
  },
});

/** A history route (plugins/history.ts declares and validates its parameters): a page of items, newest first. */
const history = (summary: string, item: z.ZodType): RouteDoc => ({
  summary,
  tags: ["History"],
  response: { 200: json("a page, newest first", historyPageSchema(item)), ...errorResponses(["invalid_request"]) },
});

/** Documentation of each public route, keyed by `METHOD url`. */
export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /healthz": {
    summary: "Liveness and what the site serves now",
    tags: ["Site"],
    response: { 200: json("the coordinator is up", healthSchema), ...errorResponses([]) },
  },
  "GET /metrics": {
    summary: "Prometheus metrics",
    tags: ["Site"],
    response: { 200: { description: "Prometheus text exposition format", content: { "text/plain": { schema: z.string() } } } },
  },
  "GET /v1/network": {
    summary: "The network's nodes, models and jobs at a glance (the portal's Network page)",
    tags: ["Site"],
    response: { 200: json("the network", view("NetworkResponse")), ...errorResponses([]) },
  },
  "GET /v1/models": {
    summary: "Models this key may use",
    tags: ["OpenAI"],
    security: bearer,
    response: { 200: json("the models", modelListSchema), ...errorResponses(auth) },
  },
  "GET /v1/models/:model": {
    summary: "One model",
    tags: ["OpenAI"],
    security: bearer,
    params: z.object({ model: z.string() }),
    response: { 200: json("the model", modelSchema), ...errorResponses([...auth, "model_not_found"]) },
  },
  "POST /v1/chat/completions": generation("Chat completion (OpenAI-compatible)"),
  "POST /v1/completions": generation("Text completion (OpenAI-compatible)"),
  "POST /v1/nodes/register": {
    summary: "Register a node with the site's join token",
    description:
      "The request is signed with the site's join token (HMAC over the exact body; headers in SITE_AUTH_HEADERS, protocol/src/siteAuth.ts) and proves the node's key by an EIP-191 signature of registrationMessage. Answers a session token for the control channel (GET /v1/control, a WebSocket).",
    tags: ["Nodes"],
    headers: z.object({
      [SITE_AUTH_HEADERS.timestamp]: z.string().describe("milliseconds since the epoch; within 60 s of the coordinator's clock"),
      [SITE_AUTH_HEADERS.nonce]: z.string().describe("used once"),
      [SITE_AUTH_HEADERS.signature]: z.string().describe("HMAC-SHA256 under the join token (protocol/src/siteAuth.ts)"),
    }),
    body: registerRequestSchema,
    response: {
      201: json("registered", z.object({ nodeId: address, sessionToken: z.string(), expiresAt: z.iso.datetime() })),
      ...errorResponses([...bodyErrors, "invalid_request", "invalid_api_key", "permission_denied", "rate_limit_exceeded"]),
    },
  },
  "POST /v1/nodes/register-browser": {
    summary: "Register a browser tab as a node, with a wallet's delegation to its session key",
    description:
      "The wallet signs once an EIP-712 BrowserNodeDelegation (protocol/src/browserNode.ts) to the tab's session key, for this site's origin and chain, until an expiry (at most 7 days ahead); the session key proves itself by an EIP-191 signature of registrationMessage over the request's timestamp and nonce. With `--browser-nodes token` the request is also signed with the site's join token (as POST /v1/nodes/register is); `open` takes any wallet; `off` refuses every tab (403). Answers a session token for the control channel, ending no later than the delegation, and the models browser nodes may serve here. Receipts the session key signs are credited to the wallet.",
    tags: ["Nodes"],
    headers: z.object({
      [SITE_AUTH_HEADERS.timestamp]: z.string().describe("milliseconds since the epoch; within 60 s of the coordinator's clock"),
      [SITE_AUTH_HEADERS.nonce]: z.string().describe("used once"),
      [SITE_AUTH_HEADERS.signature]: z.string().optional().describe("with --browser-nodes token: HMAC-SHA256 under the join token"),
    }),
    body: browserRegisterRequestSchema,
    response: {
      201: json(
        "registered",
        z.object({
          nodeId: address,
          wallet: address,
          sessionToken: z.string(),
          expiresAt: z.iso.datetime(),
          models: z.array(z.object({ id: z.string(), sha256: z.string(), sizeBytes: z.number().int(), url: z.string() })),
        }),
      ),
      ...errorResponses([...bodyErrors, "invalid_request", "invalid_api_key", "permission_denied", "rate_limit_exceeded"]),
    },
  },
  "GET /v1/blobs/:sha256": {
    summary: "A model file by its sha256, for browser nodes",
    description:
      "Only the files of models this site lets browser nodes serve (none with --browser-nodes off). Range requests (206, If-Range), ETag = the quoted sha256 (If-None-Match answers 304 with no body), immutable caching; the tab checks the sha256 before it loads the file.",
    tags: ["Nodes"],
    params: z.object({ sha256: z.string().describe("64 lower-case hex digits") }),
    response: {
      200: { description: "the GGUF file", content: { "application/octet-stream": { schema: z.string() } } },
      206: { description: "the requested range of it", content: { "application/octet-stream": { schema: z.string() } } },
      ...errorResponses(["invalid_request", "not_found"]),
    },
  },
  "GET /v1/ledger": {
    summary: "The credit ledger this site uses (chain, contract, prices)",
    tags: ["Accounts"],
    response: { 200: json("the ledger", view("LedgerResponse")), ...errorResponses([]) },
  },
  "GET /v1/auth/nonce": {
    summary: "A Sign-In with Ethereum nonce",
    tags: ["Accounts"],
    response: {
      200: json("a nonce", z.object({ nonce: z.string(), chainId: z.number().int() })),
      ...errorResponses(["rate_limit_exceeded"]),
    },
  },
  "POST /v1/auth/login": {
    summary: "Sign in with an EIP-4361 message and the wallet's signature",
    tags: ["Accounts"],
    body: loginSchema,
    response: {
      200: json("a session token (Bearer sess_...)", z.object({ token: z.string(), address, expiresAt: z.iso.datetime() })),
      ...errorResponses([...bodyErrors, "invalid_request", "invalid_api_key", "rate_limit_exceeded"]),
    },
  },
  "GET /v1/auth/session": {
    summary: "The wallet a session token belongs to",
    tags: ["Accounts"],
    security: bearer,
    response: { 200: json("the session", z.object({ address })), ...errorResponses(auth) },
  },
  "POST /v1/auth/logout": {
    summary: "End a session",
    tags: ["Accounts"],
    security: bearer,
    response: { 200: json("signed out", z.object({ signedOut: z.literal(true) })), ...errorResponses(auth) },
  },
  "POST /v1/keys": {
    summary: "Create an API key for the signed-in wallet",
    tags: ["Accounts"],
    security: bearer,
    body: newKeySchema,
    response: {
      201: json("the new key; its secret is shown once", view("NewApiKeyResponse")),
      ...errorResponses([...bodyErrors, "invalid_request", ...auth]),
    },
  },
  "GET /v1/keys": {
    summary: "The signed-in wallet's API keys",
    tags: ["Accounts"],
    security: bearer,
    response: { 200: json("the keys", view("ApiKeysResponse")), ...errorResponses(auth) },
  },
  "DELETE /v1/keys/:id": {
    summary: "Revoke an API key",
    tags: ["Accounts"],
    security: bearer,
    params: z.object({ id: z.string() }),
    response: { 200: json("revoked", z.object({ id: z.string(), revoked: z.literal(true) })), ...errorResponses([...auth, "not_found"]) },
  },
  "GET /v1/account": {
    summary: "The signed-in wallet's credits",
    tags: ["Accounts"],
    security: bearer,
    response: { 200: json("the account", view("AccountResponse")), ...errorResponses(auth) },
  },
  "GET /v1/earnings/:address": {
    summary: "What a node's address has earned",
    tags: ["Accounts"],
    params: z.object({ address }),
    response: { 200: json("the earnings", view("EarningsResponse")), ...errorResponses(["invalid_request"]) },
  },
  "GET /v1/audits": {
    summary: "Audit records (operator keys only)",
    tags: ["Audits"],
    security: bearer,
    querystring: z.object({
      node: address.optional(),
      // what the handler takes: the digits of a number from 1 to 500
      limit: z
        .string()
        .regex(/^0*([1-9]\d?|[1-4]\d\d|500)$/)
        .optional()
        .describe("1 to 500 (default 50)"),
    }),
    response: { 200: json("the audits", view("AuditsResponse")), ...errorResponses(["invalid_request", ...auth, "permission_denied"]) },
  },
  "POST /v1/audits/nodes/:node/clear": {
    summary: "Clear a node excluded after failed audits (operator keys only)",
    tags: ["Audits"],
    security: bearer,
    params: z.object({ node: address }),
    response: {
      200: json("cleared", z.object({ cleared: address.describe("the node, lower case") })),
      ...errorResponses(["invalid_request", ...auth, "permission_denied", "not_found"]),
    },
  },
  "GET /v1/federation": {
    summary: "This site's federation: peers, trust, credits owed both ways",
    tags: ["Federation"],
    response: { 200: json("the federation view", view("FederationResponse")), ...errorResponses([]) },
  },
  "GET /v1/history/status": {
    summary: "Where the embedded indexer of the chain's history stands",
    description:
      "The history routes answer from what the coordinator indexed of CreditLedger and FederationRegistry events (docs/indexing.md).",
    tags: ["History"],
    response: { 200: json("the indexer's place", historyStatusSchema), ...errorResponses([]) },
  },
  "GET /v1/history/:address/purchases": history("Credits an address bought", purchaseItemSchema),
  "GET /v1/history/:address/escrow": history("An address's deposits into escrow, withdrawal requests and withdrawals", escrowItemSchema),
  "GET /v1/history/:address/settlements": history(
    "Settlement batches that charged an address, with its cumulative spend as each posted it",
    settlementItemSchema,
  ),
  "GET /v1/history/:address/claims": history("A node's claims of its earnings", claimItemSchema),
  "GET /v1/history/transactions/:hash": {
    summary: "Everything indexed of one transaction (the portal links here where the chain has no block explorer)",
    tags: ["History"],
    response: {
      200: json("the transaction's events, in log order", transactionHistorySchema),
      ...errorResponses(["invalid_request", "not_found"]),
    },
  },
  "GET /v1/history/federation": history(
    "The federation's events: registrations, updates, key renewals, admissions, revocations, endorsements, acceptances",
    federationItemSchema,
  ),
};

/** Routes left out of the spec on purpose, each with the reason (a prefix ending in `*` covers its subtree). */
export const UNDOCUMENTED: Record<string, string> = {
  "GET /v1/control":
    "the nodes' WebSocket control channel (protocol/src/control.ts frames), opened with the session token POST /v1/nodes/register gives; not plain HTTP",
  "* /federation/v1/*":
    "coordinator-to-coordinator calls signed with HTTP Message Signatures by a trusted peer's key (docs/federation.md); not for clients",
  "GET /": "the web portal's page",
  "GET /*": "the web portal's static files",
  "GET /keys": "the web portal's page",
  "GET /earnings": "the web portal's page",
  "GET /network": "the web portal's page",
  "GET /playground": "the web portal's page",
  "GET /audits": "the web portal's page",
  "GET /federation": "the web portal's page",
  "GET /history": "the web portal's page",
  "GET /contribute": "the web portal's page",
  "GET /openapi.json": "the spec itself",
  "GET /docs*": "the interactive docs (Swagger UI) and their assets",
};

/** Why a route is left out of the spec, or undefined when it should be documented. */
export function undocumentedReason(method: string, url: string): string | undefined {
  for (const [key, reason] of Object.entries(UNDOCUMENTED)) {
    const [m, pattern] = key.split(" ") as [string, string];
    if (m !== "*" && m !== method) continue;
    if (pattern.endsWith("*") && pattern !== "/*" ? url.startsWith(pattern.slice(0, -1)) : url === pattern) return reason;
  }
  return undefined;
}
