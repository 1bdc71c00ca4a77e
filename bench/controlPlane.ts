/**
 * Control-plane capacity: thousands of simulated nodes that speak the real
 * protocol (HMAC registration, WebSocket control channel, heartbeats every 5 s,
 * job frames) connected to one coordinator process (`sharedllm coordinator start`),
 * or spread over several replicas of it on one PostgreSQL database and a NATS server
 * (docs/replicas.md), with no llama-server anywhere. Reports the coordinators' CPU and memory
 * while the fleet heartbeats, scheduling latency under a stream of requests (sent to the
 * replicas in turn), and how soon a dead node leaves the site's view (the first replica's).
 */
import { readFileSync } from "node:fs";
import { HEARTBEAT_INTERVAL_MS } from "@sharedllm/protocol";
import { testDatabase, waitFor } from "@sharedllm/testkit";
import { startNats } from "@sharedllm/testkit/nats";
import { SimNode } from "@sharedllm/testkit/simNode";
import { median } from "./coordinator.ts";
import { type CoordinatorProcess, startCoordinatorProcess } from "./coordinatorProcess.ts";

function procStats(pid: number): { cpuMs: number; rssBytes: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = (stat.split(") ")[1] ?? "").split(" ");
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { cpuMs: (Number(f[11]) + Number(f[12])) * 10, rssBytes: rssKb * 1024 };
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
}

async function pool<T>(items: T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

export async function benchControlPlane(opts: { nodes: number; requests: number; steadySeconds: number; replicas?: number }) {
  const count = opts.replicas ?? 1;
  if (count > 1 && !process.env.DATABASE_URL) throw new Error("replicas share a PostgreSQL database: set DATABASE_URL");
  const nats = count > 1 ? await startNats() : undefined;
  const db = count > 1 ? await testDatabase() : undefined;
  const replicas: CoordinatorProcess[] = [];
  const sims: SimNode[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const args = ["--max-registrations-per-minute", "65535", ...(nats ? ["--nats-url", nats.url] : [])];
      replicas.push(
        await startCoordinatorProcess({ prefix: "sharedllm-cp-", args, databaseUrl: db?.databaseUrl, secrets: replicas[0]?.secrets }),
      );
    }
    const info = replicas[0] as CoordinatorProcess;
    const { joinToken } = info;
    const cpu = () => replicas.reduce((sum, r) => sum + procStats(r.pid).cpuMs, 0);
    const rss = () => replicas.map((r) => procStats(r.pid).rssBytes / 2 ** 20);
    const idleRssMiB = rss();

    const t0 = performance.now();
    for (let i = 0; i < opts.nodes; i++) {
      sims.push(
        new SimNode({ coordinatorUrl: (replicas[i % count] as CoordinatorProcess).url, joinToken, models: ["sim-model"], slots: 4 }),
      );
    }
    await pool(sims, 64, (s) => s.start());
    const connectSeconds = (performance.now() - t0) / 1000;
    // the site's view, as the first replica has it (its own nodes and every other replica's)
    const online = async () => ((await (await fetch(`${info.url}/healthz`)).json()) as { nodes: number }).nodes;
    await waitFor("every simulated node online", async () => (await online()) === opts.nodes, 60_000, 500);

    // steady state: the whole fleet heartbeating, nothing else
    const s0 = cpu();
    const w0 = performance.now();
    await new Promise((r) => setTimeout(r, opts.steadySeconds * 1000));
    const steadyCpuPercent = ((cpu() - s0) / (performance.now() - w0)) * 100;
    const steadyRssMiB = rss();
    const stillOnline = await online();

    // requests: each goes through scheduling over the whole fleet and a simulated node's answer
    const latencies: number[] = [];
    const r0 = performance.now();
    await pool(
      Array.from({ length: opts.requests }, (_, i) => i),
      32,
      async (i) => {
        const t = performance.now();
        const res = await fetch(`${(replicas[i % count] as CoordinatorProcess).url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${info.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
        });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`request failed: HTTP ${res.status}`);
        latencies.push(performance.now() - t);
      },
    );
    const requestsPerSecond = opts.requests / ((performance.now() - r0) / 1000);
    const metrics = await Promise.all(replicas.map(async (r) => (await fetch(`${r.url}/metrics`)).text()));

    // a dead node: one whose connection closes (its process killed) is noticed at once; one that
    // falls silent with its connection open (its machine frozen, a network cut) by the sweep
    const killed = sims.pop() as SimNode;
    const k0 = performance.now();
    killed.stop();
    await waitFor("the killed node to leave the fleet", async () => (await online()) === opts.nodes - 1, 60_000, 20);
    const killedNoticedMs = performance.now() - k0;
    const silent = sims.at(-1) as SimNode;
    silent.heartbeats = false;
    const silentSince = Date.now();
    await waitFor("the silent node to leave the fleet", async () => (await online()) === opts.nodes - 2, 60_000, 100);
    const silentNoticed = Date.now();
    // each replica's own quantiles: the worst of them
    const sched = (q: string) =>
      Math.max(
        ...metrics.map((m) => Number(new RegExp(`^sharedllm_schedule_seconds\\{quantile="${q}"\\} ([0-9.e-]+)`, "m").exec(m)?.[1]) * 1000),
      );
    return {
      replicas: count,
      nodes: opts.nodes,
      heartbeatsPerSecond: opts.nodes / (HEARTBEAT_INTERVAL_MS / 1000),
      connectSeconds,
      stillOnlineAfterSteadyState: stillOnline,
      /** CPU summed over the replicas; memory per replica */
      coordinator: { idleRssMiB, steadyCpuPercent, steadyRssMiB, afterRequestsRssMiB: rss() },
      scheduling: { p50Ms: sched("0.5"), p99Ms: sched("0.99") },
      requests: { count: opts.requests, perSecond: requestsPerSecond, p50Ms: median(latencies), p99Ms: quantile(latencies, 0.99) },
      deadNode: {
        killedNoticedMs,
        /** from its last heartbeat (the bound: 3 periods), and from when it fell silent */
        silentNoticedAfterLastHeartbeatMs: silentNoticed - silent.lastHeartbeatAt,
        silentNoticedMs: silentNoticed - silentSince,
      },
    };
  } finally {
    for (const s of sims) s.stop();
    for (const r of replicas) await r.stop();
    await db?.cleanup();
    await nats?.stop();
  }
}
