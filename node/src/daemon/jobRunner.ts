/**
 * Runs one job against the local llama-server and reports it as control-channel frames: each
 * server-sent event's data is relayed (`job.chunk`) with the ids of the tokens it streams, and
 * the engine's own token counts close the job (`job.end`). Every job streams from the engine,
 * whether or not its client asked for a stream (the coordinator assembles whole responses), so
 * the coordinator always knows the output so far and can continue the job elsewhere if this
 * node fails (docs/continuation.md). The engine is asked for each token's id (`n_probs: 1`,
 * which also costs it a softmax per token) and for its running count (`timings_per_token`);
 * both are stripped from what is relayed unless the client asked for log-probabilities.
 *
 * A resumed job (`resume`: the output another node streamed before it failed) runs as a plain
 * completion of the prompt (a chat's with its template applied) plus that output.
 *
 * This is the per-token hot path on a machine whose cores llama-server wants, so it uses
 * node:http rather than fetch's web streams, on connections from EngineConnections (one per
 * job, opened ahead of time).
 */
import type { IncomingMessage } from "node:http";
import { asksForLogprobs, type JobStart, type NodeFrame, SseDecoder, type Usage } from "@sharedllm/protocol";
import { completionStep, engineMessage, postWithRetry, promptTokens, readAll, tokenize } from "./engineCalls.js";
import type { EngineConnections } from "./engineConnection.js";

const PATHS = { chat: "/v1/chat/completions", completion: "/v1/completions" } as const;

type Send = (f: NodeFrame) => void;

export async function runJob(job: JobStart, engine: EngineConnections, send: Send, signal: AbortSignal): Promise<void> {
  const clientLogprobs = asksForLogprobs(job.request);
  const counted = {
    n_probs: clientLogprobs ? undefined : 1,
    timings_per_token: true,
    stream: true,
    stream_options: { include_usage: true },
  };
  let path: string = PATHS[job.kind];
  let request: Record<string, unknown> = { ...job.request, ...counted };
  let resumed = 0;
  if (job.resume) {
    const prompt = await resumedPrompt(job, engine, signal);
    if (!prompt) return; // the job was cancelled
    resumed = prompt.resumed;
    path = PATHS.completion;
    request = {
      ...completionFields(job.request),
      prompt: prompt.tokens,
      ...counted,
      ...(prompt.slot !== undefined && { id_slot: prompt.slot }),
    };
  }
  const res = await postWithRetry(engine, path, JSON.stringify(request), signal);
  if (!res) return;
  res.setEncoding("utf8");
  const status = res.statusCode ?? 0;
  if (status !== 200) {
    const message = engineMessage(await readAll(res).catch(() => ""), status);
    // 4xx is the request's fault (e.g. prompt longer than the context); 5xx the engine's
    const clientFault = status >= 400 && status < 500;
    send({ type: "job.error", jobId: job.jobId, message, retryable: !clientFault, ...(clientFault ? { status } : {}) });
    return;
  }
  await relayStream(job, res, send, signal, { stripLogprobs: !clientLogprobs, resumed });
}

/**
 * A greedy job continued within this many tokens replays them one at a time and so goes on
 * exactly as it would have; past it (the replay takes about as long as generating them), they
 * go in as one batch, and the rest may differ where the model's top choices are near-tied.
 */
const EXACT_REPLAY_TOKENS = 256;

/** Sampling fields a resumed job keeps; the chat-only ones (messages, tools) have no place in a completion. */
const COMPLETION_FIELDS = [
  "model",
  "max_tokens",
  "n_predict",
  "temperature",
  "top_p",
  "seed",
  "stop",
  "presence_penalty",
  "frequency_penalty",
  "logit_bias",
  "top_k",
  "min_p",
  "typical_p",
  "repeat_penalty",
  "repeat_last_n",
];

function completionFields(request: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(COMPLETION_FIELDS.filter((f) => request[f] !== undefined).map((f) => [f, request[f]]));
}

/**
 * The token ids a resumed job runs: the prompt as the engine tokenizes it for a fresh job (a
 * chat's template applied, the model's start token added), then the output so far: its ids,
 * then its text. Undefined when the engine refused (reported) or the job was cancelled.
 */
async function resumedPrompt(
  job: JobStart,
  engine: EngineConnections,
  signal: AbortSignal,
): Promise<{ tokens: number[]; resumed: number; slot?: number } | undefined> {
  const resume = job.resume as NonNullable<JobStart["resume"]>;
  const head = await promptTokens(job.kind, job.request, engine, signal);
  const tail = resume.text ? await tokenize(resume.text, { special: false }, engine, signal) : [];
  if (!head || !tail) return undefined;
  const tokens = [...head, ...resume.tokens, ...tail];
  const resumed = resume.tokens.length + tail.length;
  if (job.request.temperature !== 0 || resumed > EXACT_REPLAY_TOKENS) return { tokens, resumed };
  // greedy: the output so far goes in one token at a time, as it was generated, so that the rest
  // is what the uninterrupted job would have produced (a batch computes the same tokens with
  // other rounding, and near-tied choices then differ). One slot keeps the cache between steps.
  let slot: number | undefined;
  for (let n = head.length; n < tokens.length; n++) {
    const step = await completionStep(engine, tokens.slice(0, n), { slot, fields: { temperature: 0 } }, signal);
    if (!step) return undefined;
    slot = typeof step.id_slot === "number" ? step.id_slot : undefined;
  }
  return { tokens, resumed, slot };
}

/** What the node reads in an engine event. */
interface EngineEvent {
  error?: { message?: string };
  usage?: Usage | null;
  choices?: { text?: string; logprobs?: { content?: { id?: unknown }[] } | null }[];
  timings?: { predicted_n?: number; prompt_n?: number; cache_n?: number };
}

function relayStream(
  job: JobStart,
  res: IncomingMessage,
  send: Send,
  signal: AbortSignal,
  o: { stripLogprobs: boolean; resumed: number },
): Promise<void> {
  return new Promise((resolve) => {
    let usage: Usage | undefined;
    let chunks = 0;
    /** the engine's running count of generated tokens */
    let decoded = 0;
    let promptTold = false;
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
      let event: EngineEvent;
      try {
        event = JSON.parse(data) as EngineEvent;
      } catch {
        fail(send, job, "the engine sent an event that is not JSON", chunks === 0);
        return "failed";
      }
      if (event.error) {
        fail(send, job, event.error.message ?? "engine error", chunks === 0);
        return "failed";
      }
      if (event.usage) usage = event.usage;
      // the ids of the tokens this event streams; the engine's count tells whether they are all
      // (it sends no event for a token that ends halfway through a character)
      const choice = event.choices?.[0];
      const ids = (choice?.logprobs?.content ?? []).map((p) => p.id).filter((id): id is number => Number.isInteger(id));
      const t = event.timings;
      if (!promptTold && typeof t?.prompt_n === "number") {
        // the prompt the engine took (llama-server counts its cached part apart), told once
        promptTold = true;
        send({ type: "job.prompt", jobId: job.jobId, promptTokens: t.prompt_n + (typeof t.cache_n === "number" ? t.cache_n : 0) });
      }
      const predicted = t?.predicted_n;
      const count = typeof predicted === "number" ? predicted - decoded : ids.length;
      if (typeof predicted === "number") decoded = predicted;
      if (event.usage && !job.includeUsage) {
        // the engine's own count, for job.end; not for a client that did not ask for it
        if (!event.choices?.length) return "more";
        delete event.usage;
      }
      if (choice && o.stripLogprobs) {
        if ("text" in choice) choice.logprobs = null;
        else delete choice.logprobs;
      }
      delete event.timings;
      chunks++;
      send({ type: "job.chunk", jobId: job.jobId, data: JSON.stringify(event), tokens: ids.length === count ? ids : Math.max(0, count) });
      return "more";
    };
    res.on("data", (text: string) => {
      if (finished) return;
      for (const data of sse.push(text)) {
        const state = onEvent(data);
        if (state === "failed") return finish();
        if (state === "done") {
          return finish(() => {
            if (usage) send({ type: "job.end", jobId: job.jobId, usage, ...(o.resumed ? { resumed: o.resumed } : {}) });
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
