/**
 * The tab's engine: llama.cpp compiled to WebAssembly (wllama), which runs the model in its own
 * Web Worker (the page only posts requests to it), threaded when the page is cross-origin
 * isolated. A job runs as the native node's do (node/src/daemon/jobRunner.ts): every job streams
 * from the engine, each event relayed as it comes with the ids of the tokens it streams
 * (`n_probs: 1`) and the engine's running count (`timings_per_token`), then `job.end` with the
 * engine's usage. wllama's events are llama-server's own, so they relay unchanged.
 */
import { asksForLogprobs, type JobStart, type NodeFrame, type Usage } from "@sharedllm/protocol";
import type { Wllama } from "@wllama/wllama";
import wasmUrl from "@wllama/wllama/esm/wasm/wllama.wasm?url";

export type Backend = "webgpu" | "wasm";

/** What the tab's browser offers the engine, for the capability report and the page. */
export interface BrowserCapabilities {
  /** the WebGPU adapter's info, when the browser has one */
  adapter: {
    vendor: string;
    architecture: string;
    description: string;
    isFallbackAdapter: boolean;
    features: string[];
    maxBufferSize: number;
    maxStorageBufferBindingSize: number;
  } | null;
  /** why llama.cpp's WebGPU backend cannot run on it, when it cannot */
  webgpuUnusable?: string;
  crossOriginIsolated: boolean;
  hardwareConcurrency: number;
  /** memory the browser says the device has, bytes (navigator.deviceMemory, rounded by the browser) */
  memoryBytes: number;
}

export async function browserCapabilities(): Promise<BrowserCapabilities> {
  const nav = navigator as Navigator & { gpu?: GpuLike; deviceMemory?: number };
  let adapter: BrowserCapabilities["adapter"] = null;
  let webgpuUnusable: string | undefined = "this browser has no WebGPU";
  if (nav.gpu) {
    const a = await nav.gpu.requestAdapter().catch(() => null);
    if (a) {
      const features = [...a.features] as string[];
      adapter = {
        vendor: a.info?.vendor ?? "",
        architecture: a.info?.architecture ?? "",
        description: a.info?.description ?? "",
        isFallbackAdapter: a.info?.isFallbackAdapter ?? false,
        features,
        maxBufferSize: a.limits?.maxBufferSize ?? 0,
        maxStorageBufferBindingSize: a.limits?.maxStorageBufferBindingSize ?? 0,
      };
      // llama.cpp's WebGPU backend registers no device without 16-bit floats in shaders
      webgpuUnusable = features.includes("shader-f16")
        ? undefined
        : "the WebGPU adapter lacks shader-f16, which llama.cpp's WebGPU backend needs";
    } else {
      webgpuUnusable = "the browser offers no WebGPU adapter";
    }
  }
  return {
    adapter,
    ...(webgpuUnusable && { webgpuUnusable }),
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
    hardwareConcurrency: navigator.hardwareConcurrency || 1,
    memoryBytes: (nav.deviceMemory ?? 0) * 1024 ** 3,
  };
}

interface GpuLike {
  requestAdapter(): Promise<{
    features: Set<string>;
    limits?: { maxBufferSize: number; maxStorageBufferBindingSize: number };
    info?: { vendor: string; architecture: string; description: string; isFallbackAdapter?: boolean };
  } | null>;
}

type Send = (f: NodeFrame) => void;

/** What the node reads in an engine event. */
interface EngineEvent {
  error?: { message?: string };
  usage?: Usage | null;
  choices?: { text?: string; logprobs?: { content?: { id?: unknown }[] } | null }[];
  timings?: { predicted_n?: number; predicted_per_second?: number; prompt_n?: number; cache_n?: number };
}

export class Engine {
  private constructor(
    private readonly w: Wllama,
    readonly backend: Backend,
    readonly threads: number,
  ) {}

  /**
   * Loads a checked model file. `threads`: how many the owner lets it use (1 without cross-origin
   * isolation); `webgpu`: offload layers to WebGPU where llama.cpp can.
   */
  static async load(model: Blob, o: { threads: number; webgpu: boolean; contextSize: number }): Promise<Engine> {
    const { Wllama } = await import("@wllama/wllama");
    const logs: string[] = [];
    const keep = (...a: unknown[]) => {
      if (logs.length < 400) logs.push(a.map(String).join(" "));
    };
    const w = new Wllama({ default: wasmUrl }, { logger: { debug: () => {}, log: keep, warn: keep, error: keep } });
    await w.loadModel([model], { n_ctx: o.contextSize, n_threads: o.threads, n_gpu_layers: o.webgpu ? 999 : 0, n_parallel: 1 });
    // llama.cpp says where it put the weights: a WebGPU buffer, or only the CPU's
    const backend: Backend = logs.some((l) => /load_tensors:\s+WebGPU/i.test(l)) ? "webgpu" : "wasm";
    return new Engine(w, backend, w.getNumThreads());
  }

  /** Decode speed, tokens per second, over a short greedy completion (the scheduler weighs nodes by it). */
  async measure(): Promise<number> {
    const r = (await this.w.createCompletion({ prompt: "The quick brown fox", max_tokens: 16, temperature: 0 })) as {
      timings?: { predicted_per_second?: number };
    };
    return r.timings?.predicted_per_second ?? 0;
  }

  /** Runs a job, reporting it as control-channel frames; resolves when it has ended (or was cancelled). */
  async run(job: JobStart, send: Send, signal: AbortSignal): Promise<{ tokensPerSecond?: number; completionTokens: number }> {
    if (job.resume) {
      // wllama 3 has no tokenizer call, so a job continued from another node cannot be replayed token by token here
      send({ type: "job.error", jobId: job.jobId, message: "a browser node does not continue other nodes' jobs", retryable: true });
      return { completionTokens: 0 };
    }
    const clientLogprobs = asksForLogprobs(job.request);
    const request = {
      ...job.request,
      stream: true as const,
      stream_options: { include_usage: true },
      timings_per_token: true,
      ...(clientLogprobs ? {} : { n_probs: 1 }),
      abortSignal: signal,
    };
    let usage: Usage | undefined;
    let chunks = 0;
    let decoded = 0;
    let promptTold = false;
    let tokensPerSecond: number | undefined;
    try {
      const events = (
        job.kind === "chat"
          ? await this.w.createChatCompletion(request as unknown as Parameters<Wllama["createChatCompletion"]>[0] & { stream: true })
          : await this.w.createCompletion(request as unknown as Parameters<Wllama["createCompletion"]>[0] & { stream: true })
      ) as AsyncIterable<unknown>;
      for await (const raw of events) {
        if (signal.aborted) break;
        const event = raw as EngineEvent;
        if (event.error) {
          send({ type: "job.error", jobId: job.jobId, message: event.error.message ?? "engine error", retryable: chunks === 0 });
          return { completionTokens: decoded };
        }
        if (event.usage) usage = event.usage;
        const choice = event.choices?.[0];
        const ids = (choice?.logprobs?.content ?? []).map((p) => p.id).filter((id): id is number => Number.isInteger(id));
        const t = event.timings;
        if (!promptTold && typeof t?.prompt_n === "number") {
          promptTold = true;
          send({ type: "job.prompt", jobId: job.jobId, promptTokens: t.prompt_n + (typeof t.cache_n === "number" ? t.cache_n : 0) });
        }
        if (typeof t?.predicted_per_second === "number" && t.predicted_per_second > 0) tokensPerSecond = t.predicted_per_second;
        const predicted = t?.predicted_n;
        const count = typeof predicted === "number" ? predicted - decoded : ids.length;
        if (typeof predicted === "number") decoded = predicted;
        if (event.usage && !job.includeUsage) {
          if (!event.choices?.length) continue;
          delete event.usage;
        }
        if (choice && !clientLogprobs) {
          if ("text" in choice) choice.logprobs = null;
          else delete choice.logprobs;
        }
        delete event.timings;
        chunks++;
        send({ type: "job.chunk", jobId: job.jobId, data: JSON.stringify(event), tokens: ids.length === count ? ids : Math.max(0, count) });
      }
    } catch (err) {
      if (signal.aborted) return { completionTokens: decoded };
      send({
        type: "job.error",
        jobId: job.jobId,
        message: `the browser's engine failed: ${(err as Error).message}`,
        retryable: chunks === 0,
      });
      return { completionTokens: decoded };
    }
    if (signal.aborted) return { completionTokens: decoded };
    send({
      type: "job.end",
      jobId: job.jobId,
      usage: usage ?? { prompt_tokens: 0, completion_tokens: decoded, total_tokens: decoded },
    });
    return { tokensPerSecond, completionTokens: usage?.completion_tokens ?? decoded };
  }

  async unload(): Promise<void> {
    await this.w.exit().catch(() => {});
  }
}
