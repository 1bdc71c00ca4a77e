/**
 * The closed catalog of errors a client can see. Each code has one HTTP status and
 * one OpenAI error type; bodies are always `{ error: { message, type, code, param } }`.
 */
export const ERROR_CATALOG = {
  invalid_json: { status: 400, type: "invalid_request_error" },
  invalid_request: { status: 400, type: "invalid_request_error" },
  missing_api_key: { status: 401, type: "authentication_error" },
  invalid_api_key: { status: 401, type: "authentication_error" },
  insufficient_credits: { status: 402, type: "insufficient_quota" },
  permission_denied: { status: 403, type: "permission_error" },
  // coordinator-to-coordinator calls (docs/federation.md): 401 = the request does not
  // authenticate (missing, forged, altered, stale, replayed); 403 = it is authentic enough to
  // name its sender, and that sender may not call this site (or addressed another site)
  federation_signature_missing: { status: 401, type: "authentication_error" },
  federation_signature_invalid: { status: 401, type: "authentication_error" },
  federation_digest_mismatch: { status: 401, type: "authentication_error" },
  federation_stale_request: { status: 401, type: "authentication_error" },
  federation_replayed: { status: 401, type: "authentication_error" },
  federation_key_unknown: { status: 401, type: "authentication_error" },
  federation_unknown_peer: { status: 403, type: "permission_error" },
  federation_untrusted_peer: { status: 403, type: "permission_error" },
  federation_key_expired: { status: 403, type: "permission_error" },
  federation_wrong_destination: { status: 403, type: "permission_error" },
  // forwarded jobs (docs/federation.md): this site takes none from peers now, or none more from this one
  federation_inbound_off: { status: 503, type: "service_unavailable" },
  federation_peer_over_cap: { status: 429, type: "requests" },
  federation_transaction_running: { status: 409, type: "invalid_request_error" },
  model_not_found: { status: 404, type: "invalid_request_error" },
  not_found: { status: 404, type: "invalid_request_error" },
  method_not_allowed: { status: 405, type: "invalid_request_error" },
  payload_too_large: { status: 413, type: "invalid_request_error" },
  unsupported_media_type: { status: 415, type: "invalid_request_error" },
  rate_limit_exceeded: { status: 429, type: "requests" },
  internal_error: { status: 500, type: "server_error" },
  node_failed: { status: 502, type: "server_error" },
  no_capacity: { status: 503, type: "service_unavailable" },
  timeout: { status: 504, type: "server_error" },
} as const satisfies Record<string, { status: number; type: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

export interface OpenAIErrorBody {
  error: { message: string; type: string; code: ErrorCode; param: string | null };
}

/** An error meant for the client: stable code, status and a message that says what to do. */
export class ApiError extends Error {
  override name = "ApiError";
  readonly code: ErrorCode;
  readonly param: string | null;
  /** whether trying another node may succeed (the scheduler fails over on these) */
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, opts: { param?: string; retryable?: boolean; cause?: unknown } = {}) {
    super(message, { cause: opts.cause });
    this.code = code;
    this.param = opts.param ?? null;
    this.retryable = opts.retryable ?? false;
  }

  get status(): number {
    return ERROR_CATALOG[this.code].status;
  }

  toBody(): OpenAIErrorBody {
    return errorBody(this.code, this.message, this.param);
  }

  /** The error an OpenAI-shaped body of this catalog stands for (what a client got); undefined for any other body. */
  static fromBody(body: unknown): ApiError | undefined {
    const e = (body as { error?: { message?: unknown; code?: unknown; param?: unknown } } | null)?.error;
    if (typeof e?.message !== "string" || typeof e.code !== "string" || !Object.hasOwn(ERROR_CATALOG, e.code)) return undefined;
    return new ApiError(e.code as ErrorCode, e.message, typeof e.param === "string" ? { param: e.param } : {});
  }
}

export function errorBody(code: ErrorCode, message: string, param: string | null = null): OpenAIErrorBody {
  return { error: { message, type: ERROR_CATALOG[code].type, code, param } };
}
