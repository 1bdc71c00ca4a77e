/**
 * The node's requests to its own llama-server that are not a job's stream: posting on a
 * connection from EngineConnections (once more when a warm one was closed under it), reading a
 * JSON answer, and the token ids of a job's prompt as the engine tokenizes it for a fresh job.
 * A resumed job (jobRunner.ts) and an audit (auditRunner.ts) both build on them.
 */
import { type IncomingMessage, request } from "node:http";
import { SharedLLMError } from "../errors.js";
import type { EngineConnections } from "./engineConnection.js";

/** llama-server did not take the request at all (it is down or restarting); nothing was sent for the job. */
export class EngineUnreachable extends SharedLLMError {
  override name = "EngineUnreachable";
  constructor(message: string, options: { cause?: unknown } = {}) {
    super("engine", message, options);
  }
}

/** llama-server answered a request with an error status; 4xx is the request's fault (e.g. longer than the context). */
export class EngineRefused extends SharedLLMError {
  override name = "EngineRefused";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super("engine", message);
  }
}

/** Posts to the engine; a warm connection it closed a moment ago fails before any response: once more on a new one. */
export function postWithRetry(
  engine: EngineConnections,
  path: string,
  body: string,
  signal: AbortSignal,
): Promise<IncomingMessage | undefined> {
  return requestWithRetry(engine, path, body, signal);
}

/** A request to the engine (GET without a body), once more on a new connection as postWithRetry; undefined when aborted. */
async function requestWithRetry(
  engine: EngineConnections,
  path: string,
  body: string | undefined,
  signal: AbortSignal,
): Promise<IncomingMessage | undefined> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await send(engine, path, body, signal);
    } catch (err) {
      if (signal.aborted) return undefined;
      if (attempt < 2 && ["ECONNRESET", "EPIPE"].includes((err as NodeJS.ErrnoException).code ?? "")) continue;
      throw new EngineUnreachable(`the engine is not reachable: ${(err as Error).message}`, { cause: err });
    }
  }
}

function send(engine: EngineConnections, path: string, body: string | undefined, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request({
      path,
      method: body === undefined ? "GET" : "POST",
      createConnection: () => engine.take(),
      signal,
      headers: {
        ...(body !== undefined && { "content-type": "application/json", "content-length": Buffer.byteLength(body) }),
        ...(engine.authorization ? { authorization: engine.authorization } : {}),
      },
    });
    req.once("response", resolve);
    req.once("error", reject);
    req.end(body);
  });
}

export function readAll(res: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    res.on("data", (s: string) => {
      text += s;
    });
    res.once("end", () => resolve(text));
    res.once("error", reject);
    res.once("aborted", () => reject(new Error("connection closed")));
  });
}

/** The engine's error message in an error body (OpenAI-shaped or not), else the body's start. */
export function engineMessage(text: string, status: number): string {
  try {
    const message = (JSON.parse(text) as { error?: { message?: unknown } }).error?.message;
    if (typeof message === "string") return message;
  } catch {
    // not JSON: the text itself
  }
  return text.slice(0, 500) || `HTTP ${status}`;
}

/**
 * The engine's JSON answer to one request (a POST of `body`, a GET without); undefined when
 * `signal` aborted it. Throws EngineRefused when it answers with an error status,
 * EngineUnreachable when it does not answer.
 */
export async function callEngine(
  engine: EngineConnections,
  path: string,
  body: object | undefined,
  signal: AbortSignal,
): Promise<Record<string, unknown> | undefined> {
  const res = await requestWithRetry(engine, path, body && JSON.stringify(body), signal);
  if (!res) return undefined;
  res.setEncoding("utf8");
  let text: string;
  try {
    text = await readAll(res);
  } catch (err) {
    if (signal.aborted) return undefined;
    throw new EngineUnreachable(`the engine closed the connection during ${path}`, { cause: err });
  }
  const status = res.statusCode ?? 0;
  if (status !== 200) throw new EngineRefused(status, `the engine refused ${path} (HTTP ${status}): ${engineMessage(text, status)}`);
  return JSON.parse(text) as Record<string, unknown>;
}

/**
 * A job's prompt as the engine tokenizes it for a fresh job: a chat's with its template applied
 * (`/apply-template` of the request), the model's start token added. Undefined when cancelled.
 */
export async function promptTokens(
  kind: "chat" | "completion",
  request: Record<string, unknown>,
  engine: EngineConnections,
  signal: AbortSignal,
): Promise<number[] | undefined> {
  const prompt = kind === "chat" ? (await callEngine(engine, "/apply-template", request, signal))?.prompt : request.prompt;
  if (prompt === undefined) return undefined;
  return tokenize(prompt, { special: true }, engine, signal);
}

/**
 * Token ids of `content` by the engine's tokenizer; `special`: add the start token and parse
 * special tokens' text (a prompt), else neither (text a model generated). Undefined when cancelled.
 */
export async function tokenize(
  content: unknown,
  o: { special: boolean },
  engine: EngineConnections,
  signal: AbortSignal,
): Promise<number[] | undefined> {
  const answer = await callEngine(engine, "/tokenize", { content, add_special: o.special, parse_special: o.special }, signal);
  if (!answer) return undefined;
  if (!Array.isArray(answer.tokens) || !answer.tokens.every((t) => Number.isInteger(t))) {
    throw new SharedLLMError("engine", "the engine's /tokenize answer has no token ids");
  }
  return answer.tokens as number[];
}

/**
 * One token after `tokens`, on the engine's slot `slot` (default: the one the engine picks) with
 * that slot's cache kept (`cache_prompt`): the part of `tokens` it already holds is not computed
 * again, so steps over a growing prefix cost one token each. `fields` adds request fields. The
 * answer names the slot (`id_slot`) for the next step; undefined when cancelled.
 */
export function completionStep(
  engine: EngineConnections,
  tokens: readonly number[],
  o: { slot?: number; fields?: Record<string, unknown> },
  signal: AbortSignal,
): Promise<Record<string, unknown> | undefined> {
  const body = { ...o.fields, prompt: tokens, n_predict: 1, cache_prompt: true, id_slot: o.slot ?? -1 };
  return callEngine(engine, "/completion", body, signal);
}
