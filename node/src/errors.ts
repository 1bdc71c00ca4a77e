/**
 * The base of every error a user can meet from the node daemon or the `sharedllm` command: a
 * stable code, a message that says what to do, and an optional hint. The CLI prints such an error
 * as its message and hint and exits non-zero, with no stack trace; anything else is unexpected
 * and printed with its stack. Test with `instanceof`, never by name.
 */

/** What kind of trouble it is; stable, for scripts and tests. */
export type ErrorCode =
  /** a flag, argument or local file says something that cannot work */
  | "config"
  /** another process already holds what this one needs (a port, the node daemon of this home) */
  | "busy"
  /** nothing runs that the command could talk to */
  | "not_running"
  /** a coordinator, chain or download site did not answer */
  | "unreachable"
  /** it answered no: the coordinator, a worker, the chain */
  | "refused"
  /** the model store or a model file */
  | "model"
  /** the llama.cpp engine or another supervised process (rpc-server, the dev chain): building, starting, reaching it */
  | "engine"
  /** a LAN cluster cannot be formed or placed */
  | "cluster"
  /** a tool of this machine is missing or failed (python3, cmake, systemd) */
  | "system"
  /** Ctrl-C or SIGTERM */
  | "interrupted";

export class SharedLLMError extends Error {
  override name = "SharedLLMError";
  readonly code: ErrorCode;
  /** a further step the user can take, printed on its own line */
  readonly hint?: string;

  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
  }
}
