/**
 * Coordinator path vs direct llama-server: the same streamed requests
 * (temperature 0, fixed seed, fixed length) sent straight to the node's
 * llama-server and through the coordinator, interleaved A/B, one at a time.
 * Reports medians of decode tokens/s, time to first token and inter-token gap.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "@sharedllm/testkit";

export interface StreamTiming {
  /** ms from sending the request to the first token's chunk */
  ttftMs: number;
  /** tokens after the first, per second of streaming */
  decodeTps: number;
  /** median ms between consecutive token chunks */
  medianGapMs: number;
  tokens: number;
  text: string;
}

/**
 * The request every decode bench times: a long greedy story, fixed seed, `maxTokens` tokens
 * whatever the model would say (ignore_eos), so every path and round generates the same work.
 */
export function timedRequest(model: string | undefined, maxTokens: number) {
  return {
    model,
    messages: [{ role: "user", content: "Tell me a long story about a lighthouse keeper." }],
    max_tokens: maxTokens,
    temperature: 0,
    seed: 7,
    ignore_eos: true,
  };
}

/** full-length requests per path before measuring */
const WARM_UP_REQUESTS = 3;
const BIN = join(import.meta.dirname, "..", "cli", "bin", "sharedllm.js");

/**
 * Sends one streamed chat request and times each token's chunk as the client sees
 * it. node:http keeps the client's own CPU use small: on two cores every client
 * cycle is taken from llama-server on both paths alike. A fresh connection per
 * request on both paths (llama-server may drop kept-alive ones after a stream).
 */
export function timeStream(url: string, apiKey: string, body: Record<string, unknown>): Promise<StreamTiming> {
  const payload = JSON.stringify({ ...body, stream: true });
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request(`${url}/v1/chat/completions`, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}`, "content-length": Buffer.byteLength(payload) },
    });
    req.setNoDelay(true);
    req.once("error", reject);
    req.once("response", (res) => {
      res.setEncoding("utf8");
      if (res.statusCode !== 200) {
        let text = "";
        res.on("data", (s: string) => {
          text += s;
        });
        res.once("end", () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      const stamps: number[] = [];
      let text = "";
      let buf = "";
      res.on("data", (s: string) => {
        const now = performance.now();
        buf += s;
        let cut = buf.indexOf("\n\n");
        while (cut >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          cut = buf.indexOf("\n\n");
          if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
          const content = (JSON.parse(event.slice(6)) as { choices: { delta?: { content?: string } }[] }).choices[0]?.delta?.content;
          if (content) {
            stamps.push(now);
            text += content;
          }
        }
      });
      res.once("error", reject);
      res.once("end", () => {
        const first = stamps[0] ?? Number.NaN;
        const last = stamps.at(-1) ?? Number.NaN;
        const gaps = stamps.slice(1).map((t, i) => t - (stamps[i] as number));
        resolve({
          ttftMs: first - t0,
          decodeTps: ((stamps.length - 1) * 1000) / (last - first),
          medianGapMs: median(gaps),
          tokens: stamps.length,
          text,
        });
      });
    });
    req.end(payload);
  });
}

/** User + system CPU of a process so far, ms, from /proc (Linux; 10 ms ticks). */
export function processCpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) * (1000 / CLOCK_TICKS_PER_SECOND);
}
const CLOCK_TICKS_PER_SECOND = 100;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export async function benchCoordinator(opts: { rounds: number; maxTokens: number; engineArgs?: string }) {
  const home = await mkdtemp(join(tmpdir(), "sharedllm-bench-"));
  const stops: Array<() => void> = [];
  // the system runs as users run it: `sharedllm up`, in its own process
  const args = ["up", "--port", "0", "--slots", "1", "--no-chain", ...(opts.engineArgs ? ["--engine-args", opts.engineArgs] : [])];
  const up = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, SHAREDLLM_HOME: home },
    stdio: ["ignore", "ignore", "inherit"],
  });
  try {
    const info = await waitFor(
      "sharedllm up",
      async () =>
        JSON.parse(await readFile(join(home, "up.json"), "utf8")) as {
          coordinatorUrl: string;
          apiKey: string;
          models: string[];
          engineUrl: string;
          engineApiKey: string;
        },
      600_000,
      250,
    );
    const body = timedRequest(info.models[0], opts.maxTokens);
    // a bare TCP relay process in front of llama-server: the floor cost of any extra hop
    const pipe = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "pipe.ts"), new URL(info.engineUrl).port], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    stops.push(() => pipe.kill());
    const pipePort = await new Promise<string>((resolve) => pipe.stdout?.once("data", (b: Buffer) => resolve(b.toString().trim())));
    const paths = { direct: info.engineUrl, pipe: `http://127.0.0.1:${pipePort}`, coordinator: info.coordinatorUrl };
    // warm-up: page cache, connection pools, and the relays' JavaScript compiled as a long-running server has it
    const keys = { direct: info.engineApiKey, pipe: info.engineApiKey, coordinator: info.apiKey };
    for (let i = 0; i < WARM_UP_REQUESTS; i++)
      for (const [which, url] of Object.entries(paths)) await timeStream(url, keys[which as keyof typeof keys], body);
    const runs: Record<keyof typeof paths, StreamTiming[]> = { direct: [], pipe: [], coordinator: [] };
    // CPU of the process relaying each path, summed over that path's requests: what the relay takes from llama-server
    const relayCpuMs = { direct: () => 0, pipe: () => processCpuMs(pipe.pid), coordinator: () => processCpuMs(up.pid) };
    const relayCpu = { direct: 0, pipe: 0, coordinator: 0 };
    const arms = Object.keys(paths) as (keyof typeof paths)[];
    for (let r = 0; r < opts.rounds; r++) {
      // rotate which path goes first, so drift hits all alike
      const order = arms.map((_, i) => arms[(i + r) % arms.length] as keyof typeof paths);
      for (const which of order) {
        const cpu0 = relayCpuMs[which]();
        const timing = await timeStream(paths[which], keys[which], body);
        relayCpu[which] += relayCpuMs[which]() - cpu0;
        runs[which].push(timing);
      }
    }
    const stat = (xs: StreamTiming[]) => ({
      decodeTps: median(xs.map((x) => x.decodeTps)),
      ttftMs: median(xs.map((x) => x.ttftMs)),
      medianGapMs: median(xs.map((x) => x.medianGapMs)),
      tokens: median(xs.map((x) => x.tokens)),
    });
    const d = stat(runs.direct);
    const p = stat(runs.pipe);
    const c = stat(runs.coordinator);
    const sameText = runs.direct.every((x, i) => x.text === runs.coordinator[i]?.text);
    // each round's arms ran back to back: a per-round ratio cancels the drift between rounds
    const paired = (a: StreamTiming[], b: StreamTiming[], f: (x: StreamTiming, y: StreamTiming) => number) =>
      median(a.map((x, i) => f(x, b[i] as StreamTiming)));
    return {
      rounds: opts.rounds,
      maxTokens: opts.maxTokens,
      direct: d,
      pipe: p,
      coordinator: c,
      decodeRatio: paired(runs.coordinator, runs.direct, (x, y) => x.decodeTps / y.decodeTps),
      addedTtftMs: paired(runs.coordinator, runs.direct, (x, y) => x.ttftMs - y.ttftMs),
      gapRatio: paired(runs.coordinator, runs.direct, (x, y) => x.medianGapMs / y.medianGapMs),
      pipeDecodeRatio: paired(runs.pipe, runs.direct, (x, y) => x.decodeTps / y.decodeTps),
      coordinatorVsPipeDecode: paired(runs.coordinator, runs.pipe, (x, y) => x.decodeTps / y.decodeTps),
      sameText,
      /** µs of relay-process CPU per streamed token (0 for direct) */
      relayCpuPerTokenUs: {
        pipe: (relayCpu.pipe * 1000) / runs.pipe.reduce((n, x) => n + x.tokens, 0),
        coordinator: (relayCpu.coordinator * 1000) / runs.coordinator.reduce((n, x) => n + x.tokens, 0),
      },
    };
  } finally {
    for (const stop of stops) stop();
    up.kill("SIGINT");
    await new Promise((r) => up.once("exit", r));
    await rm(home, { recursive: true, force: true });
  }
}
