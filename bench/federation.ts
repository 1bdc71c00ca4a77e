/**
 * A federated hop against the same request served locally: two sites on one dev chain (the
 * testkit's `startFederatedSites`, in a child process), B's node serving the default model under
 * a name only B has. The same streamed temperature-0 request of fixed length goes (local) to B
 * directly and (federated) to A, which forwards it to B, interleaved A/B one at a time. Reports
 * medians of time to first token, decode tokens/s and inter-token gap, the added TTFT and the
 * decode ratio as medians of per-round pairs, the sites' extra CPU per token on the federated
 * path, and whether the text is the same on both.
 */
import { spawn } from "node:child_process";
import { cpus } from "node:os";
import { join } from "node:path";
import { median, processCpuMs, type StreamTiming, timedRequest, timeStream } from "./coordinator.ts";

/** full-length requests per path before measuring */
const WARM_UP_REQUESTS = 3;

interface Sites {
  model: string;
  a: { url: string; apiKey: string };
  b: { url: string; apiKey: string };
}

export async function benchFederation(opts: { rounds: number; maxTokens: number; threads?: number }) {
  const cores = cpus().length;
  const threads = opts.threads ?? cores;
  // both coordinators and both node daemons in one child process; the engines are its children
  const child = spawn(process.execPath, ["--import", "tsx", join(import.meta.dirname, "federationSites.ts"), String(threads)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise((r) => child.once("exit", r));
  try {
    const sites = await new Promise<Sites>((resolve, reject) => {
      let out = "";
      child.stdout.setEncoding("utf8").on("data", (s: string) => {
        out += s;
        const nl = out.indexOf("\n");
        if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)) as Sites);
      });
      child.once("exit", (code) => reject(new Error(`the federated sites exited (${code}) before they were ready`)));
    });
    const body = timedRequest(sites.model, opts.maxTokens);
    const paths = { local: sites.b, federated: sites.a };
    type Arm = keyof typeof paths;
    const arms = Object.keys(paths) as Arm[];
    for (let i = 0; i < WARM_UP_REQUESTS; i++) for (const arm of arms) await timeStream(paths[arm].url, paths[arm].apiKey, body);
    const runs: Record<Arm, StreamTiming[]> = { local: [], federated: [] };
    // the sites' process CPU per arm: both arms run through B; the federated one adds A's relay and B's signed-job handling
    const sitesCpu = { local: 0, federated: 0 };
    for (let r = 0; r < opts.rounds; r++) {
      // alternate which path goes first, so drift hits both alike
      for (const arm of r % 2 ? [...arms].reverse() : arms) {
        const cpu0 = processCpuMs(child.pid);
        runs[arm].push(await timeStream(paths[arm].url, paths[arm].apiKey, body));
        sitesCpu[arm] += processCpuMs(child.pid) - cpu0;
      }
    }
    const stat = (xs: StreamTiming[]) => ({
      decodeTps: median(xs.map((x) => x.decodeTps)),
      ttftMs: median(xs.map((x) => x.ttftMs)),
      /** the fastest first token: what the path costs when nothing else on the machine gets in the way */
      ttftMinMs: Math.min(...xs.map((x) => x.ttftMs)),
      medianGapMs: median(xs.map((x) => x.medianGapMs)),
      tokens: median(xs.map((x) => x.tokens)),
    });
    // each round's arms ran back to back: a per-round pair cancels the drift between rounds
    const paired = (f: (fed: StreamTiming, local: StreamTiming) => number) =>
      median(runs.federated.map((x, i) => f(x, runs.local[i] as StreamTiming)));
    const tokens = (arm: Arm) => runs[arm].reduce((n, x) => n + x.tokens, 0);
    const cpuPerTokenUs = (arm: Arm) => (sitesCpu[arm] * 1000) / tokens(arm);
    return {
      rounds: opts.rounds,
      maxTokens: opts.maxTokens,
      cores,
      engineThreads: threads,
      local: stat(runs.local),
      federated: stat(runs.federated),
      addedTtftMs: paired((x, y) => x.ttftMs - y.ttftMs),
      decodeRatio: paired((x, y) => x.decodeTps / y.decodeTps),
      gapRatio: paired((x, y) => x.medianGapMs / y.medianGapMs),
      /** µs of the sites' process CPU per streamed token, per arm, and the federated arm's extra */
      sitesCpuPerTokenUs: {
        local: cpuPerTokenUs("local"),
        federated: cpuPerTokenUs("federated"),
        added: cpuPerTokenUs("federated") - cpuPerTokenUs("local"),
      },
      sameText: runs.local.every((x, i) => x.text === runs.federated[i]?.text),
    };
  } finally {
    child.stdin.end();
    await exited;
  }
}
