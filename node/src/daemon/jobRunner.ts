/**
 * Runs one job against the local llama-server and reports it as control-channel
 * frames: each server-sent event's data is relayed verbatim (`job.chunk`), the
 * engine's own token counts close the stream (`job.end`). The engine is always
 * asked for usage; the usage-only chunk is passed on only to clients that asked.
 */
import type { JobStart, NodeFrame, Usage } from "@sharedllm/protocol";

const PATHS = { chat: "/v1/chat/completions", completion: "/v1/completions" } as const;

export async function runJob(job: JobStart, llamaUrl: string, send: (f: NodeFrame) => void, signal: AbortSignal): Promise<void> {
  const body = job.stream ? { ...job.request, stream: true, stream_options: { include_usage: true } } : { ...job.request, stream: false };
  let res: Response;
  try {
    res = await fetch(llamaUrl + PATHS[job.kind], {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (!signal.aborted) fail(send, job, `the engine is not reachable: ${(err as Error).message}`, true);
    return;
  }
  if (!res.ok) {
    const text = await res.text().catch(() => "");
    let message = text.slice(0, 500) || res.statusText;
    try {
      message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message;
    } catch {
      // not JSON: keep the text
    }
    // 4xx is the request's fault (e.g. prompt longer than the context); 5xx the engine's
    const clientFault = res.status >= 400 && res.status < 500;
    send({ type: "job.error", jobId: job.jobId, message, retryable: !clientFault, ...(clientFault ? { status: res.status } : {}) });
    return;
  }
  if (!job.stream) {
    try {
      send({ type: "job.result", jobId: job.jobId, body: (await res.json()) as Record<string, unknown> });
    } catch (err) {
      if (!signal.aborted) fail(send, job, `the engine failed mid-response: ${(err as Error).message}`, false);
    }
    return;
  }
  await relayStream(job, res, send, signal);
}

async function relayStream(job: JobStart, res: Response, send: (f: NodeFrame) => void, signal: AbortSignal) {
  let usage: Usage | undefined;
  let chunks = 0;
  let buffered = "";
  const decoder = new TextDecoder();
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  /** "more" to read on, "done" at [DONE], "failed" after reporting an engine error */
  const onEvent = (event: string): "more" | "done" | "failed" => {
    // an event is one or more lines; llama-server sends a single `data: ...` line
    for (const line of event.split("\n")) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(line[5] === " " ? 6 : 5);
      if (data === "[DONE]") return "done";
      if (data.startsWith('{"error"')) {
        const msg = (JSON.parse(data) as { error?: { message?: string } }).error?.message ?? "engine error";
        fail(send, job, msg, chunks === 0);
        return "failed";
      }
      if (data.includes('"usage"')) {
        const parsed = JSON.parse(data) as { usage?: Usage | null; choices?: unknown[] };
        if (parsed.usage) usage = parsed.usage;
        if (parsed.choices?.length === 0 && !job.includeUsage) continue;
      }
      chunks++;
      send({ type: "job.chunk", jobId: job.jobId, data });
    }
    return "more";
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let cut = buffered.indexOf("\n\n");
      while (cut >= 0) {
        const event = buffered.slice(0, cut);
        buffered = buffered.slice(cut + 2);
        const state = onEvent(event);
        if (state !== "more") {
          if (state === "done") {
            if (usage) send({ type: "job.end", jobId: job.jobId, usage });
            else fail(send, job, "the engine ended the stream without usage", false);
          }
          await reader.cancel().catch(() => {});
          return;
        }
        cut = buffered.indexOf("\n\n");
      }
    }
    if (!signal.aborted) fail(send, job, "the engine closed the stream before it finished", chunks === 0);
  } catch (err) {
    if (!signal.aborted) fail(send, job, `the engine failed mid-stream: ${(err as Error).message}`, chunks === 0);
  }
}

function fail(send: (f: NodeFrame) => void, job: JobStart, message: string, retryable: boolean) {
  send({ type: "job.error", jobId: job.jobId, message, retryable });
}
