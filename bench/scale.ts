/**
 * Hosted scale (docs/replicas.md): one coordinator process against three replicas on one
 * PostgreSQL database and one NATS server (a bench's own), in one run. Simulated nodes (the real
 * control protocol, no engine) are spread over the replicas, so most jobs cross from the replica
 * a client reached to the one holding the node. Per arm:
 * - added latency: one client's plain requests one after another (a node answers at once, so the
 *   whole time is the coordinators'), p50 and p99;
 * - throughput: `clients` clients at once, requests per second, and their latency p50/p99;
 * - relay: streamed requests at full speed, the coordinators' CPU (user + system, from /proc,
 *   summed over the replicas) per relayed token;
 * - each replica's resident memory after the run.
 * The nodes and clients run in this process; on a 2-core machine they share the cores with the
 * replicas, PostgreSQL and NATS.
 */
import { readFile } from "node:fs/promises";
import { testDatabase } from "@sharedllm/testkit";
import { startNats, type TestNats } from "@sharedllm/testkit/nats";
import { SimNode } from "@sharedllm/testkit/simNode";
import { processCpuMs } from "./coordinator.ts";
import { type CoordinatorProcess, startCoordinatorProcess } from "./coordinatorProcess.ts";
import { call, fullSpeed } from "./relay.ts";

/** The value at share `q` of the sorted samples (nearest rank). */
function percentile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? Number.NaN;
}

export interface ScaleArm {
  replicas: number;
  addedLatencyMs: { p50: number; p99: number };
  loaded: { clients: number; requestsPerSecond: number; p50: number; p99: number };
  relay: { tokensPerSecond: number; cpuPerTokenUs: number };
  rssMiB: number[];
}

async function arm(replicaCount: number, o: ScaleOptions, nats: TestNats): Promise<ScaleArm> {
  const db = await testDatabase();
  const replicas: CoordinatorProcess[] = [];
  const sims: SimNode[] = [];
  try {
    const args = replicaCount > 1 ? ["--nats-url", nats.url] : [];
    for (let i = 0; i < replicaCount; i++) {
      replicas.push(
        await startCoordinatorProcess({ prefix: "sharedllm-scale-", args, databaseUrl: db.databaseUrl, secrets: replicas[0]?.secrets }),
      );
    }
    const { joinToken, apiKey } = replicas[0] as CoordinatorProcess;
    const urls = replicas.map((r) => r.url);
    for (let i = 0; i < o.nodes; i++) {
      const sim = new SimNode({
        coordinatorUrl: urls[i % urls.length] as string,
        joinToken,
        models: ["sim-model"],
        slots: 64,
        onJob: fullSpeed,
      });
      await sim.start();
      sims.push(sim);
    }
    // every replica schedules over every node before the clients start
    for (const url of urls) {
      for (const deadline = Date.now() + 15_000; ; ) {
        const health = (await (await fetch(`${url}/healthz`)).json()) as { nodes: number };
        if (health.nodes === o.nodes) break;
        if (Date.now() > deadline) throw new Error(`${url} sees ${health.nodes} of ${o.nodes} nodes`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    let turn = 0;
    const next = () => urls[turn++ % urls.length] as string;
    // warm up every replica's code paths
    await Promise.all(Array.from({ length: o.clients }, () => call(next(), apiKey, 8, true)));

    const alone: number[] = [];
    for (let i = 0; i < o.requests / 4; i++) alone.push((await call(next(), apiKey, 8, false)).ms);

    const loaded: number[] = [];
    let left = o.requests;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: o.clients }, async () => {
        while (left-- > 0) loaded.push((await call(next(), apiKey, 8, false)).ms);
      }),
    );
    const loadedSeconds = (performance.now() - t0) / 1000;

    const cpu0 = replicas.reduce((s, r) => s + processCpuMs(r.pid), 0);
    const r0 = performance.now();
    let relayed = 0;
    let streams = o.requests / 8;
    await Promise.all(
      Array.from({ length: o.clients }, async () => {
        while (streams-- > 0) {
          // read after the await: `relayed += await …` would add to the value read before it
          const { events } = await call(next(), apiKey, o.tokens, true);
          relayed += events;
        }
      }),
    );
    const relaySeconds = (performance.now() - r0) / 1000;
    const cpuMs = replicas.reduce((s, r) => s + processCpuMs(r.pid), 0) - cpu0;
    const rssMiB = await Promise.all(
      replicas.map(async (r) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${r.pid}/status`, "utf8"))?.[1] ?? 0) / 1024),
    );
    return {
      replicas: replicaCount,
      addedLatencyMs: { p50: percentile(alone, 0.5), p99: percentile(alone, 0.99) },
      loaded: {
        clients: o.clients,
        requestsPerSecond: loaded.length / loadedSeconds,
        p50: percentile(loaded, 0.5),
        p99: percentile(loaded, 0.99),
      },
      relay: { tokensPerSecond: relayed / relaySeconds, cpuPerTokenUs: (cpuMs * 1000) / relayed },
      rssMiB,
    };
  } finally {
    for (const s of sims) s.stop();
    for (const r of replicas) await r.stop();
    await db.cleanup();
  }
}

export interface ScaleOptions {
  nodes: number;
  clients: number;
  requests: number;
  tokens: number;
}

export async function benchScale(o: ScaleOptions): Promise<{ arms: ScaleArm[] } & ScaleOptions> {
  if (!process.env.DATABASE_URL) throw new Error("the scale bench needs PostgreSQL: set DATABASE_URL (replicas share one database)");
  const nats = await startNats();
  try {
    // one process first, then three replicas: the same nodes, clients and requests
    return { ...o, arms: [await arm(1, o, nats), await arm(3, o, nats)] };
  } finally {
    await nats.stop();
  }
}
