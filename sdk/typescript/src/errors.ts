/** The error the SDK throws for a coordinator's answer: its OpenAI-shaped body, `{ error: { message, type, code, param } }`. */
export class SharedLLMError extends Error {
  override name = "SharedLLMError";
  /** the HTTP status */
  readonly status: number;
  /** the catalog's stable code (protocol/src/errors.ts), e.g. `invalid_api_key`, `insufficient_credits` */
  readonly code: string;
  /** the OpenAI error type, e.g. `invalid_request_error`, `insufficient_quota` */
  readonly type: string;
  /** the request field at fault, when there is one */
  readonly param: string | null;

  constructor(status: number, body: unknown) {
    const e = (body as { error?: { message?: unknown; type?: unknown; code?: unknown; param?: unknown } } | null)?.error;
    super(typeof e?.message === "string" ? e.message : `the coordinator answered ${status}`);
    this.status = status;
    this.code = typeof e?.code === "string" ? e.code : "unknown";
    this.type = typeof e?.type === "string" ? e.type : "unknown";
    this.param = typeof e?.param === "string" ? e.param : null;
  }
}
