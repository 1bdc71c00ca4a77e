/**
 * Runs one job against the local llama-server and reports it as control-channel
 * frames: each server-sent event's data is relayed verbatim (`job.chunk`), the
 * engine's own token counts close the stream (`job.end`). The engine is always
 * asked for usage; the usage-only chunk is passed on only to clients that asked.
 *
 * This is the per-token hot path on a machine whose cores llama-server wants,
 * so it uses node:http rather than fetch's web streams, on connections from
 * EngineConnections (one per job, opened ahead of time).
 */
import { type IncomingMessage, request } from "node:http";
import { type JobStart, type NodeFrame, SseDecoder, type Usage } from "@sharedllm/protocol";
import { SharedLLMError } from "../errors.js";
import type { EngineConnections } from "./engineConnection.js";

const PATHS = { chat: "/v1/chat/completions", completion: "/v1/completions" } as const;

type Send = (f: NodeFrame) => void;

/** llama-server did not take the request at all (it is down or restarting); nothing was sent for the job. */
export class EngineUnreachable extends SharedLLMError {
  override name = "EngineUnreachable";
  constructor(message: string, options: { cause?: unknown } = {}) {
    super("engine", message, options);
  }
}

export async function runJob(job: JobStart, engine: EngineConnections, send: Send, signal: AbortSignal): Promise<void> {
  const body = JSON.stringify(
    job.stream ? { ...job.request, stream: true, stream_options: { include_usage: true } } : { ...job.request, stream: false },
  );
  let res: IncomingMessage | undefined;
  // a warm connection the engine closed a moment ago fails before any response: try once more on a new one
  for (let attempt = 1; !res; attempt++) {
    try {
      res = await post(engine, PATHS[job.kind], body, signal);
    } catch (err) {
      if (signal.aborted) return;
      if (attempt < 2 && ["ECONNRESET", "EPIPE"].includes((err as NodeJS.ErrnoException).code ?? "")) continue;
      throw new EngineUnreachable(`the engine is not reachable: ${(err as Error).message}`, { cause: err });
    }
  }
  res.setEncoding("utf8");
  const status = res.statusCode ?? 0;
  if (status !== 200) {
    const text = await readAll(res).catch(() => "");
    let message = text.slice(0, 500) || `HTTP ${status}`;
    try {
      message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message;
    } catch {
      // not JSON: keep the text
    }
    // 4xx is the request's fault (e.g. prompt longer than the context); 5xx the engine's
    const clientFault = status >= 400 && status < 500;
    send({ type: "job.error", jobId: job.jobId, message, retryable: !clientFault, ...(clientFault ? { status } : {}) });
    return;
  }
  if (!job.stream) {
    try {
      send({ type: "job.result", jobId: job.jobId, body: JSON.parse(await readAll(res)) as Record<string, unknown> });
    } catch (err) {
      if (!signal.aborted) fail(send, job, `the engine failed mid-response: ${(err as Error).message}`, false);
    }
    return;
  }
  await relayStream(job, res, send, signal);
}

function post(engine: EngineConnections, path: string, body: string, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request({
      path,
      method: "POST",
      createConnection: () => engine.take(),
      signal,
      headers: {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        ...(engine.authorization ? { authorization: engine.authorization } : {}),
      },
    });
    req.once("response", resolve);
    req.once("error", reject);
    req.end(body);
  });
}

function readAll(res: IncomingMessage): Promise<string> {
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

function relayStream(job: JobStart, res: IncomingMessage, send: Send, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    let usage: Usage | undefined;
    let chunks = 0;
    const sse = new SseDecoder();
    let finished = false;
    const finish = (after?: () => void) => {
      if (finished) return;
      finished = true;
      if (!signal.aborted) after?.();
      res.destroy();
      resolve();
    };
    /** "more" to read on, "done" at [DONE], "failed" after reporting an engine error */
    const onEvent = (data: string): "more" | "done" | "failed" => {
      if (data === "[DONE]") return "done";
      if (data.startsWith('{"error"')) {
        const msg = (JSON.parse(data) as { error?: { message?: string } }).error?.message ?? "engine error";
        fail(send, job, msg, chunks === 0);
        return "failed";
      }
      if (data.includes('"usage"')) {
        const parsed = JSON.parse(data) as { usage?: Usage | null; choices?: unknown[] };
        if (parsed.usage) usage = parsed.usage;
        if (parsed.choices?.length === 0 && !job.includeUsage) return "more";
      }
      chunks++;
      send({ type: "job.chunk", jobId: job.jobId, data });
      return "more";
    };
    res.on("data", (text: string) => {
      if (finished) return;
      for (const data of sse.push(text)) {
        const state = onEvent(data);
        if (state === "failed") return finish();
        if (state === "done") {
          return finish(() => {
            if (usage) send({ type: "job.end", jobId: job.jobId, usage });
            else fail(send, job, "the engine ended the stream without usage", false);
          });
        }
      }
    });
    const broken = (why: string) => finish(() => fail(send, job, `the engine ${why}`, chunks === 0));
    res.once("end", () => broken("closed the stream before it finished"));
    res.once("aborted", () => broken("failed mid-stream (connection lost)"));
    res.once("error", (err) => broken(`failed mid-stream: ${err.message}`));
    signal.addEventListener("abort", () => finish(), { once: true });
  });
}

function fail(send: Send, job: JobStart, message: string, retryable: boolean) {
  send({ type: "job.error", jobId: job.jobId, message, retryable });
}
