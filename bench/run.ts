/**
 * `npm run bench`: benchmarks that print ratios and figures measured side by side
 * in one run. Options: --only=coordinator|split|control-plane|settlement|continuation|audit|federation|relay|scale|browser,
 * --rounds=N (20), --max-tokens=N (128), --engine-args="..." (extra llama-server arguments),
 * --engine-threads=N (federation: the engines' threads; default all cores),
 * --nodes=N (5000), --requests=N (2000), --replicas=N (control-plane: 1; more need DATABASE_URL), --json.
 */
import { parseArgs } from "node:util";
import { benchAudit } from "./audit.ts";
import { benchBrowser } from "./browser.ts";
import { benchContinuation } from "./continuation.ts";
import { benchControlPlane } from "./controlPlane.ts";
import { benchCoordinator } from "./coordinator.ts";
import { benchFederation } from "./federation.ts";
import { benchRelay } from "./relay.ts";
import { benchScale } from "./scale.ts";
import { benchSettlement } from "./settlement.ts";
import { benchSplit } from "./split.ts";

const { values } = parseArgs({
  options: {
    only: { type: "string" },
    rounds: { type: "string", default: "20" },
    "max-tokens": { type: "string", default: "128" },
    "engine-args": { type: "string" },
    "engine-threads": { type: "string" },
    nodes: { type: "string", default: "5000" },
    requests: { type: "string", default: "2000" },
    replicas: { type: "string", default: "1" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  process.stdout.write(
    'usage: npm run bench -- [--only=coordinator|split|control-plane|settlement|continuation|audit|federation|relay|scale|browser] [--rounds=N] [--max-tokens=N] [--engine-args="--poll 0"] [--engine-threads=N] [--nodes=N] [--requests=N] [--replicas=N] [--json]\n',
  );
  process.exit(0);
}
const f = (n: number, d = 2) => n.toFixed(d);
const results: Record<string, unknown> = {};

if (!values.only || values.only === "coordinator") {
  const r = await benchCoordinator({
    rounds: Number(values.rounds),
    maxTokens: Number(values["max-tokens"]),
    engineArgs: values["engine-args"],
  });
  results.coordinator = r;
  if (!values.json) {
    const { direct: d, pipe: p, coordinator: c } = r;
    process.stdout.write(
      [
        `coordinator path vs direct llama-server (${r.rounds} interleaved rounds, ${r.maxTokens} tokens, medians)`,
        "                   direct   bare pipe   coordinator   coordinator vs direct",
        `decode tokens/s    ${f(d.decodeTps, 1).padStart(8)} ${f(p.decodeTps, 1).padStart(11)} ${f(c.decodeTps, 1).padStart(13)}   ${f(r.decodeRatio, 3)}x   (target >= 0.97)`,
        `first token ms     ${f(d.ttftMs).padStart(8)} ${f(p.ttftMs).padStart(11)} ${f(c.ttftMs).padStart(13)}   +${f(r.addedTtftMs)} ms (target <= 5)`,
        `inter-token gap ms ${f(d.medianGapMs).padStart(8)} ${f(p.medianGapMs).padStart(11)} ${f(c.medianGapMs).padStart(13)}   ${f(r.gapRatio, 3)}x   (target within 5%)`,
        `bare pipe vs direct decode: ${f(r.pipeDecodeRatio, 3)}x; coordinator vs bare pipe: ${f(r.coordinatorVsPipeDecode, 3)}x`,
        `relay process CPU per token: bare pipe ${f(r.relayCpuPerTokenUs.pipe, 0)} us, coordinator (with its in-process node) ${f(r.relayCpuPerTokenUs.coordinator, 0)} us`,
        `same text on both paths: ${r.sameText}`,
        "",
      ].join("\n"),
    );
  }
}

if (!values.only || values.only === "browser") {
  // a browser decodes a few tokens a second: fewer rounds and tokens than the native benches
  const r = await benchBrowser({ rounds: Math.min(Number(values.rounds), 5), maxTokens: Math.min(Number(values["max-tokens"]), 64) });
  results.browser = r;
  if (!values.json) {
    const t = r.decodeTps;
    process.stdout.write(
      [
        `browser node's engine (wllama in Chromium) vs native llama-server (${r.rounds} interleaved rounds, ${r.maxTokens} tokens, ${r.threads} threads each, median decode tokens/s)`,
        `  native ${f(t.native, 1)}   browser WebAssembly ${f(t.wasm, 1)} (${f(r.wasmVsNative, 3)}x), one thread ${f(t.wasm1, 1)} (${f(r.oneThreadVsNative, 3)}x)   browser with WebGPU on ${f(t.webgpu, 1)} (${f(r.webgpuVsNative, 3)}x)`,
        `  same text on all arms: ${r.sameText} (share of the native text reproduced before the first difference: WebAssembly ${f(r.agreement.wasm, 3)}, one thread ${f(r.agreement.wasm1, 3)}, WebGPU on ${f(r.agreement.webgpu, 3)})`,
        `  what the browser had: ${JSON.stringify(r.browser)}`,
        "",
      ].join("\n"),
    );
  }
}

if (!values.only || values.only === "split") {
  const r = await benchSplit({ rounds: Number(values.rounds), maxTokens: Number(values["max-tokens"]) });
  results.split = r;
  if (!values.json) {
    const t = r.decodeTps as Record<string, number>;
    process.stdout.write(
      [
        `model split over two rpc-servers on this machine (${r.rounds} interleaved rounds, ${r.maxTokens} tokens, median decode tokens/s)`,
        `  raw --rpc ${f(t.raw ?? 0, 1)}   tunnelled (TLS 1.3) ${f(t.tunnel ?? 0, 1)}   solo ${f(t.solo ?? 0, 1)}`,
        `  tunnelled vs raw split: ${f(r.tunnelVsRaw, 3)}x (target >= 0.95)`,
        `  split vs solo: ${f(r.splitVsSolo, 3)}x (raw split vs solo ${f(r.rawSplitVsSolo, 3)}x); same text on all arms: ${r.sameText}`,
        `  bytes sent to the workers when the cluster forms: cold caches ${(r.reform.coldBytes / 2 ** 20).toFixed(1)} MiB, re-formed warm ${(r.reform.warmBytes / 2 ** 20).toFixed(1)} MiB`,
        "",
      ].join("\n"),
    );
  }
}

if (!values.only || values.only === "continuation") {
  const r = await benchContinuation({ trials: Number(values.rounds), cutAt: 40, maxTokens: 100 });
  results.continuation = r;
  if (!values.json) {
    const { kill: k, yield: y, engine: e } = r;
    process.stdout.write(
      [
        `continuation: a greedy ${r.maxTokens}-token stream cut after ${r.cutAt} tokens, continued on another node (${k.trials} trials each)`,
        "                      gap p50 ms   gap p95 ms",
        `  node killed        ${f(k.p50Ms, 0).padStart(10)}   ${f(k.p95Ms, 0).padStart(10)}   (goal: p50 < 1500)`,
        `  owner yield        ${f(y.p50Ms, 0).padStart(10)}   ${f(y.p95Ms, 0).padStart(10)}`,
        `  the engine taking the ${e.resentTokens} tokens again after its ${e.promptTokens}-token prompt: as one batch ${f(e.batchMs, 0)} ms, replayed token by token ${f(e.replayMs, 0)} ms`,
        `  every continued stream's text equals the uninterrupted one: ${r.sameText}`,
        "",
      ].join("\n"),
    );
  }
}

if (!values.only || values.only === "control-plane") {
  const r = await benchControlPlane({
    nodes: Number(values.nodes),
    requests: Number(values.requests),
    steadySeconds: 20,
    replicas: Number(values.replicas),
  });
  results.controlPlane = r;
  if (!values.json) {
    const mib = (xs: number[]) => `${xs.map((x) => f(x, 0)).join(" / ")} MiB`;
    process.stdout.write(
      [
        `control plane: ${r.nodes} simulated nodes on the real protocol, ${r.replicas > 1 ? `spread over ${r.replicas} replicas (PostgreSQL, NATS)` : "one coordinator process"}`,
        `  connected in ${f(r.connectSeconds, 1)} s; ${r.heartbeatsPerSecond} heartbeats/s; online after 20 s steady state: ${r.stillOnlineAfterSteadyState}`,
        `  coordinator CPU while heartbeating: ${f(r.coordinator.steadyCpuPercent, 1)}% of one core (all replicas); RSS per replica ${mib(r.coordinator.idleRssMiB)} idle -> ${mib(r.coordinator.steadyRssMiB)} with the fleet -> ${mib(r.coordinator.afterRequestsRssMiB)} after requests`,
        `  scheduling decision (the worst replica's): p50 ${f(r.scheduling.p50Ms, 3)} ms, p99 ${f(r.scheduling.p99Ms, 3)} ms (goal: p99 <= 1 ms)`,
        `  ${r.requests.count} requests at concurrency 32: ${f(r.requests.perSecond, 0)}/s, latency p50 ${f(r.requests.p50Ms)} ms, p99 ${f(r.requests.p99Ms)} ms`,
        `  dead node: killed (connection closed) gone in ${f(r.deadNode.killedNoticedMs, 0)} ms; silent (connection open) gone ${f(r.deadNode.silentNoticedAfterLastHeartbeatMs / 1000, 1)} s after its last heartbeat (${f(r.deadNode.silentNoticedMs / 1000, 1)} s after it fell silent; goal <= 15 s)`,
        "",
      ].join("\n"),
    );
  }
}
if (!values.only || values.only === "settlement") {
  const rows = await benchSettlement();
  results.settlement = rows.map((x) => ({ ...x, gas: x.gas.toString() }));
  if (!values.json) {
    process.stdout.write(
      [
        "settlement gas: the coordinator's Settler on the dev chain, one settle transaction per batch (<= 400 users each)",
        "  receipts from          receipts   users   transactions        gas   gas per receipt",
        ...rows.map(
          (x) =>
            `  ${x.shape.padEnd(20)} ${String(x.receipts).padStart(8)} ${String(x.users).padStart(7)} ${String(x.transactions).padStart(14)} ${String(x.gas).padStart(10)} ${f(x.perReceipt, 0).padStart(17)}`,
        ),
        "",
      ].join("\n"),
    );
  }
}
if (!values.only || values.only === "audit") {
  const r = await benchAudit({ rounds: Math.min(Number(values.rounds), 12), maxTokens: Number(values["max-tokens"]), positions: 8 });
  results.audit = r;
  if (!values.json) {
    const pct = (x: number) => `${f(100 * x, 1)}%`;
    process.stdout.write(
      [
        `audits: a greedy job of ${r.completionTokens} tokens served on a 1-slot llama-server, then scored at ${r.positions} random positions on an auditor's own (${r.rounds} rounds, medians)`,
        `  serving ${f(r.serveMs, 0)} ms; audit in one pass (what the auditor does) ${f(r.onePassMs, 0)} ms = ${f(r.onePassVsServe, 3)}x serving; token-by-token replay (without a scorer) ${f(r.replayMs, 0)} ms = ${f(r.replayVsServe, 3)}x`,
        `  compute spent on audits: ${pct(r.shareAt["0.5"] ?? 0)} at the established rate 0.5, ${pct(r.shareAt["1"] ?? 0)} for new and suspect nodes (rate 1); share = r x c / (1 + r x c), c = audit / serving`,
        `  goal: a node cheating on 10% of its jobs caught within 100 jobs with 99%: rate >= (1 - 0.01^(1/100)) / 0.1 = ${f(r.goal.rate, 3)} (each audited cheat caught);`,
        `    at that rate audits take ${pct(r.goal.shareOnePass)} of compute in one pass, ${pct(r.goal.shareReplay)} with replay (target < 5%)`,
        "",
      ].join("\n"),
    );
  }
}
if (!values.only || values.only === "federation") {
  const r = await benchFederation({
    rounds: Number(values.rounds),
    maxTokens: Number(values["max-tokens"]),
    ...(values["engine-threads"] ? { threads: Number(values["engine-threads"]) } : {}),
  });
  results.federation = r;
  if (!values.json) {
    const { local: l, federated: d } = r;
    const compete =
      r.engineThreads >= r.cores
        ? `the engine's ${r.engineThreads} threads take all ${r.cores} cores: coordinators, client and engine compete`
        : `${r.cores} cores, the engine on ${r.engineThreads}: the rest (coordinators, client, chain) share ${r.cores - r.engineThreads}`;
    process.stdout.write(
      [
        `federated hop (A -> B) vs the same request at B (${r.rounds} interleaved rounds, ${r.maxTokens} tokens, medians; ${compete})`,
        "                      local   federated   federated vs local",
        `decode tokens/s    ${f(l.decodeTps, 1).padStart(8)} ${f(d.decodeTps, 1).padStart(11)}   ${f(r.decodeRatio, 3)}x   (goal >= 0.97 with cores to spare)`,
        `first token ms     ${f(l.ttftMs).padStart(8)} ${f(d.ttftMs).padStart(11)}   +${f(r.addedTtftMs)} ms (goal < 5 on loopback)`,
        `  fastest          ${f(l.ttftMinMs).padStart(8)} ${f(d.ttftMinMs).padStart(11)}`,
        `inter-token gap ms ${f(l.medianGapMs).padStart(8)} ${f(d.medianGapMs).padStart(11)}   ${f(r.gapRatio, 3)}x`,
        `sites' process CPU per token: local ${f(r.sitesCpuPerTokenUs.local, 0)} us, federated ${f(r.sitesCpuPerTokenUs.federated, 0)} us (the hop adds ${f(r.sitesCpuPerTokenUs.added, 0)} us)`,
        `same text on both paths: ${r.sameText}`,
        "",
      ].join("\n"),
    );
  }
}
if (!values.only || values.only === "relay") {
  // the embedded database, and PostgreSQL (a hosted site's) when DATABASE_URL names a server
  const arms = process.env.DATABASE_URL ? [false, true] : [false];
  const runs = [];
  for (const postgres of arms) runs.push(await benchRelay({ nodes: 4, clients: 8, requests: 512, tokens: 512, postgres }));
  results.relay = runs;
  if (!values.json) {
    const r0 = runs[0] as (typeof runs)[0];
    process.stdout.write(
      [
        `relay: ${r0.nodes} simulated remote nodes streaming one token per event at full speed to ${r0.clients} streaming clients (${r0.requests} requests x ${r0.tokensPerRequest} tokens)`,
        "  database     coordinator CPU per token   tokens/s   coordinator CPU   RSS",
        ...runs.map(
          (r) =>
            `  ${r.database.padEnd(12)} ${`${f(r.coordinatorCpuPerTokenUs, 1)} us`.padStart(25)} ${f(r.tokensPerSecond, 0).padStart(10)} ${`${f(r.coordinatorCpuPercent, 0)}%`.padStart(17)} ${`${f(r.coordinatorRssMiB, 0)} MiB`.padStart(9)}`,
        ),
        "  goal: <= 50 us per relayed token",
        "",
      ].join("\n"),
    );
  }
}
if ((!values.only && process.env.DATABASE_URL) || values.only === "scale") {
  // replicas share a PostgreSQL database: without DATABASE_URL the whole run skips this one
  const r = await benchScale({ nodes: 12, clients: 16, requests: Math.min(Number(values.requests), 800), tokens: 256 });
  // the control plane of a big fleet over three replicas (--nodes, 10000 for the issue's figure)
  const plane = await benchControlPlane({ nodes: Number(values.nodes), requests: 2000, steadySeconds: 20, replicas: 3 });
  results.scale = { ...r, controlPlane: plane };
  if (!values.json) {
    const row = (label: string, cell: (a: (typeof r.arms)[0]) => string) =>
      `  ${label.padEnd(34)}${r.arms.map((a) => cell(a).padStart(22)).join("")}`;
    process.stdout.write(
      [
        `scale: ${r.nodes} simulated nodes spread over the replicas, ${r.requests} plain requests (8 tokens), streams of ${r.tokens} tokens; PostgreSQL and NATS on this machine`,
        row("", (a) => `${a.replicas} replica${a.replicas > 1 ? "s" : ""}`),
        row("added latency p50 / p99 (1 client)", (a) => `${f(a.addedLatencyMs.p50)} / ${f(a.addedLatencyMs.p99)} ms`),
        row(`requests/s (${r.clients} clients)`, (a) => f(a.loaded.requestsPerSecond, 0)),
        row("  their latency p50 / p99", (a) => `${f(a.loaded.p50)} / ${f(a.loaded.p99)} ms`),
        row("relayed tokens/s", (a) => f(a.relay.tokensPerSecond, 0)),
        row("coordinator CPU per relayed token", (a) => `${f(a.relay.cpuPerTokenUs, 1)} us`),
        row("memory per replica", (a) => a.rssMiB.map((m) => `${f(m, 0)}`).join(" / ") + " MiB"),
        `  control plane, ${plane.nodes} simulated nodes over 3 replicas: scheduling p50 ${f(plane.scheduling.p50Ms, 3)} ms, p99 ${f(plane.scheduling.p99Ms, 3)} ms (goal <= 1 ms);` +
          ` heartbeats ${f(plane.coordinator.steadyCpuPercent, 1)}% of a core (all replicas); RSS ${plane.coordinator.steadyRssMiB.map((m) => f(m, 0)).join(" / ")} MiB;` +
          ` a silent node gone ${f(plane.deadNode.silentNoticedAfterLastHeartbeatMs / 1000, 1)} s after its last heartbeat (goal <= 15 s), a killed one in ${f(plane.deadNode.killedNoticedMs, 0)} ms`,
        "",
      ].join("\n"),
    );
  }
}
if (values.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
