/**
 * `npm run bench -- --only=browser`: decode speed of the browser node's engine (wllama in Debian's
 * Chromium, as the Contribute page runs it) against a native llama-server on the same machine and
 * model, side by side in one run. Arms: native llama-server; the browser on WebAssembly (no GPU),
 * with as many threads as native and with one (what a page without cross-origin isolation gets);
 * the browser with WebGPU on (`--enable-unsafe-webgpu`, SwiftShader on machines without a GPU,
 * all layers asked for the GPU). The page is served cross-origin isolated (COOP/COEP) so wllama
 * runs threads; each arm gets the same thread count. Rounds are interleaved, after one warm-up
 * each; figures are medians of the engines' own decode timings (`predicted_per_second`).
 */
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DEFAULT_MODEL, ensureEngine, ModelStore, resolvePaths, startLlamaServer } from "@sharedllm/node";
import { tempPaths } from "@sharedllm/testkit";
import { launchBrowser } from "@sharedllm/testkit/browser";
import type { Page } from "playwright-core";
import { median } from "./coordinator.ts";

const MESSAGES = [{ role: "user", content: "Write a short story about a lighthouse keeper and a storm." }];

/** The page: wllama loaded from the package's own files, a model from this server. */
const PAGE = `<!doctype html><meta charset="utf-8"><title>bench</title><script type="module">
import { Wllama } from "/wllama/index.js";
let w;
const logs = [];
window.load = async ({ threads, gpu }) => {
  const keep = (...a) => logs.push(a.join(" "));
  w = new Wllama({ default: "/wllama/wasm/wllama.wasm" }, { logger: { debug() {}, log: keep, warn: keep, error: keep } });
  const blob = await (await fetch("/model.gguf")).blob();
  await w.loadModel([blob], { n_ctx: 2048, n_threads: threads, n_gpu_layers: gpu ? 999 : 0, n_parallel: 1 });
  let adapter = null;
  const a = navigator.gpu && (await navigator.gpu.requestAdapter());
  if (a) adapter = { vendor: a.info.vendor, architecture: a.info.architecture, fallback: a.info.isFallbackAdapter, shaderF16: a.features.has("shader-f16") };
  return { isolated: crossOriginIsolated, threads: w.getNumThreads(), webgpuLayers: logs.some((l) => /load_tensors:\\s+WebGPU/i.test(l)), adapter };
};
window.gen = async ({ messages, maxTokens }) => {
  const r = await w.createChatCompletion({ messages, max_tokens: maxTokens, temperature: 0 });
  return { text: r.choices[0].message.content, tps: r.timings.predicted_per_second, tokens: r.usage.completion_tokens };
};
</script>`;

export async function benchBrowser(o: { rounds: number; maxTokens: number; threads?: number }) {
  const threads = o.threads ?? availableParallelism();
  const { cache } = resolvePaths();
  const engine = await ensureEngine({ cache });
  const store = new ModelStore(cache);
  const entry = await store.pull("default");
  const modelPath = store.blobPath(entry.sha256);
  const paths = await tempPaths("sharedllm-bench-browser-");
  const native = await startLlamaServer({
    engine,
    modelId: DEFAULT_MODEL.id,
    modelPath,
    slots: 1,
    contextPerSlot: 2048,
    threads,
    logDir: paths.home,
  });
  const wllamaDir = join(dirname(fileURLToPath(import.meta.resolve("@wllama/wllama"))));
  const server = createServer((req, res) => {
    const isolated = { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" };
    const file = (path: string, type: string) => {
      res.writeHead(200, { ...isolated, "content-type": type, "content-length": statSync(path).size });
      createReadStream(path).pipe(res);
    };
    const url = req.url ?? "/";
    if (url === "/") return void res.writeHead(200, { ...isolated, "content-type": "text/html" }).end(PAGE);
    if (url === "/model.gguf") return file(modelPath, "application/octet-stream");
    if (/^\/wllama\/[\w/.-]+$/.test(url) && !url.includes(".."))
      return file(join(wllamaDir, url.slice("/wllama/".length)), url.endsWith(".wasm") ? "application/wasm" : "text/javascript");
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const browsers = { wasm: await launchBrowser(), webgpu: await launchBrowser({ webgpu: true }) };
  try {
    type Arm = "wasm" | "wasm1" | "webgpu";
    const pages: Record<Arm, { page: Page; info: unknown }> = {} as never;
    for (const arm of ["wasm", "wasm1", "webgpu"] as const) {
      const page = await browsers[arm === "webgpu" ? "webgpu" : "wasm"].newPage();
      await page.goto(origin);
      // wasm1: one thread, what a page gets without cross-origin isolation (and wllama's default on 2 cores)
      const info = await page.evaluate((a) => (window as unknown as { load(a: unknown): Promise<unknown> }).load(a), {
        threads: arm === "wasm1" ? 1 : threads,
        gpu: arm === "webgpu",
      });
      pages[arm] = { page, info };
    }
    const nativeGen = async () => {
      const res = await fetch(`${native.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${native.apiKey}` },
        body: JSON.stringify({ messages: MESSAGES, max_tokens: o.maxTokens, temperature: 0 }),
      });
      const b = (await res.json()) as { choices: { message: { content: string } }[]; timings: { predicted_per_second: number } };
      return { text: b.choices[0]?.message.content ?? "", tps: b.timings.predicted_per_second };
    };
    const browserGen = (arm: Arm) =>
      pages[arm].page.evaluate((a) => (window as unknown as { gen(a: unknown): Promise<{ text: string; tps: number }> }).gen(a), {
        messages: MESSAGES,
        maxTokens: o.maxTokens,
      });
    const arms = {
      native: nativeGen,
      wasm: () => browserGen("wasm"),
      wasm1: () => browserGen("wasm1"),
      webgpu: () => browserGen("webgpu"),
    };
    const tps: Record<keyof typeof arms, number[]> = { native: [], wasm: [], wasm1: [], webgpu: [] };
    const texts: Record<keyof typeof arms, string> = { native: "", wasm: "", wasm1: "", webgpu: "" };
    for (const run of Object.values(arms)) await run(); // warm-up
    for (let i = 0; i < o.rounds; i++) {
      for (const [name, run] of Object.entries(arms) as [keyof typeof arms, () => Promise<{ text: string; tps: number }>][]) {
        const r = await run();
        tps[name].push(r.tps);
        texts[name] = r.text;
      }
    }
    const m = { native: median(tps.native), wasm: median(tps.wasm), wasm1: median(tps.wasm1), webgpu: median(tps.webgpu) };
    return {
      rounds: o.rounds,
      maxTokens: o.maxTokens,
      threads,
      decodeTps: m,
      wasmVsNative: m.wasm / m.native,
      oneThreadVsNative: m.wasm1 / m.native,
      webgpuVsNative: m.webgpu / m.native,
      sameText: texts.wasm === texts.native && texts.wasm1 === texts.native && texts.webgpu === texts.native,
      /** how much of the native text each browser arm reproduced before it first differed (1: all of it) */
      agreement: {
        wasm: agreement(texts.native, texts.wasm),
        wasm1: agreement(texts.native, texts.wasm1),
        webgpu: agreement(texts.native, texts.webgpu),
      },
      texts,
      browser: { wasm: pages.wasm.info, wasm1: pages.wasm1.info, webgpu: pages.webgpu.info },
    };
  } finally {
    await browsers.wasm.close();
    await browsers.webgpu.close();
    server.close();
    await native.supervisor.stop();
    await paths.cleanup();
  }
}

/** The share of `a` (characters) that `b` begins with identically. */
function agreement(a: string, b: string): number {
  let n = 0;
  while (n < a.length && a[n] === b[n]) n++;
  return a.length ? n / Math.max(a.length, b.length) : 1;
}
