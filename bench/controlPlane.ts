/**
 * Control-plane capacity: thousands of simulated nodes that speak the real
 * protocol (HMAC registration, WebSocket control channel, heartbeats every 5 s,
 * job frames) connected to one coordinator process (`sharedllm coordinator start`),
 * with no llama-server anywhere. Reports the coordinator's CPU and memory while
 * the fleet heartbeats, and scheduling latency under a stream of requests.
 */
import { readFileSync } from "node:fs";
import { HEARTBEAT_INTERVAL_MS } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { SimNode } from "@sharedllm/testkit/simNode";
import { median } from "./coordinator.ts";
import { startCoordinatorProcess } from "./coordinatorProcess.ts";

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

export async function benchControlPlane(opts: { nodes: number; requests: number; steadySeconds: number }) {
  const info = await startCoordinatorProcess({ prefix: "sharedllm-cp-", args: ["--max-registrations-per-minute", "65535"] });
  const { joinToken, pid } = info;
  const sims: SimNode[] = [];
  try {
    const idle = procStats(pid);

    const t0 = performance.now();
    for (let i = 0; i < opts.nodes; i++) sims.push(new SimNode({ coordinatorUrl: info.url, joinToken, models: ["sim-model"], slots: 4 }));
    await pool(sims, 64, (s) => s.start());
    const connectSeconds = (performance.now() - t0) / 1000;
    const online = async () => Number(/^sharedllm_nodes_online (\d+)/m.exec(await (await fetch(`${info.url}/metrics`)).text())?.[1]);
    await waitFor("every simulated node online", async () => (await online()) === opts.nodes, 60_000, 500);

    // steady state: the whole fleet heartbeating, nothing else
    const s0 = procStats(pid);
    const w0 = performance.now();
    await new Promise((r) => setTimeout(r, opts.steadySeconds * 1000));
    const s1 = procStats(pid);
    const steadyCpuPercent = ((s1.cpuMs - s0.cpuMs) / (performance.now() - w0)) * 100;
    const stillOnline = await online();

    // requests: each goes through scheduling over the whole fleet and a simulated node's answer
    const latencies: number[] = [];
    const r0 = performance.now();
    await pool(
      Array.from({ length: opts.requests }, (_, i) => i),
      32,
      async () => {
        const t = performance.now();
        const res = await fetch(`${info.url}/v1/chat/completions`, {
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
    const metrics = await (await fetch(`${info.url}/metrics`)).text();

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
    const sched = (q: string) =>
      Number(new RegExp(`^sharedllm_schedule_seconds\\{quantile="${q}"\\} ([0-9.e-]+)`, "m").exec(metrics)?.[1]) * 1000;
    const after = procStats(pid);
    return {
      nodes: opts.nodes,
      heartbeatsPerSecond: opts.nodes / (HEARTBEAT_INTERVAL_MS / 1000),
      connectSeconds,
      stillOnlineAfterSteadyState: stillOnline,
      coordinator: {
        idleRssMiB: idle.rssBytes / 2 ** 20,
        steadyCpuPercent,
        steadyRssMiB: s1.rssBytes / 2 ** 20,
        afterRequestsRssMiB: after.rssBytes / 2 ** 20,
      },
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
    await info.stop();
  }
}
