/**
 * The coordinator's cost of relaying a token: one coordinator process (`sharedllm coordinator
 * start`, no ledger; its embedded database, or a fresh PostgreSQL database) and simulated remote
 * nodes (the real control protocol, no engine) that stream each job's tokens as fast as their
 * WebSocket takes them, one token per event, to streaming clients reading as fast as they can. Reports the coordinator process's CPU
 * per relayed token (user + system, from /proc), the tokens relayed per second, and its memory.
 * The nodes and clients run in this process, so their CPU is not counted.
 */
import { readFile } from "node:fs/promises";
import { request } from "node:http";
import type { JobStart, NodeFrame } from "@sharedllm/protocol";
import { testDatabase } from "@sharedllm/testkit";
import { SimNode } from "@sharedllm/testkit/simNode";
import { processCpuMs } from "./coordinator.ts";
import { startCoordinatorProcess } from "./coordinatorProcess.ts";

/** Streams `job`'s max_tokens events of one token each, yielding to I/O every few events, then ends it. */
export function fullSpeed(job: JobStart, send: (f: NodeFrame) => void): void {
  const total = Number(job.request.max_tokens);
  let sent = 0;
  const burst = () => {
    for (let i = 0; i < 16 && sent < total; i++, sent++) {
      const data = JSON.stringify({ choices: [{ index: 0, delta: { content: " word" } }] });
      send({ type: "job.chunk", jobId: job.jobId, data, tokens: [sent + 1] });
    }
    if (sent < total) setImmediate(burst);
    else send({ type: "job.end", jobId: job.jobId, usage: { prompt_tokens: 3, completion_tokens: total, total_tokens: total + 3 } });
  };
  burst();
}

/** One request; resolves with its milliseconds and, streamed, the token events it read. */
export function call(url: string, apiKey: string, maxTokens: number, stream: boolean): Promise<{ ms: number; events: number }> {
  const payload = JSON.stringify({ model: "sim-model", stream, max_tokens: maxTokens, messages: [{ role: "user", content: "go" }] });
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}`, "content-length": Buffer.byteLength(payload) },
    });
    req.on("response", (res) => {
      if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}`));
      let events = 0;
      let tail = "";
      res.setEncoding("utf8");
      res.on("data", (s: string) => {
        if (!stream) return;
        const text = tail + s;
        for (let at = text.indexOf('"content"'); at >= 0; at = text.indexOf('"content"', at + 1)) events++;
        tail = text.slice(-8);
      });
      res.on("end", () => resolve({ ms: performance.now() - t0, events }));
    });
    req.on("error", reject);
    req.end(payload);
  });
}

export async function benchRelay(opts: { nodes: number; clients: number; requests: number; tokens: number; postgres: boolean }) {
  // a fresh database on the server of DATABASE_URL, or the embedded one
  const db = opts.postgres ? await testDatabase() : undefined;
  const info = await startCoordinatorProcess({ prefix: "sharedllm-relay-", databaseUrl: db?.databaseUrl });
  const { joinToken } = info;
  const sims: SimNode[] = [];
  try {
    for (let i = 0; i < opts.nodes; i++) {
      const sim = new SimNode({ coordinatorUrl: info.url, joinToken, models: ["sim-model"], slots: opts.clients, onJob: fullSpeed });
      await sim.start();
      sims.push(sim);
    }
    // warm the coordinator's code paths up before measuring
    await Promise.all(Array.from({ length: opts.clients }, () => call(info.url, info.apiKey, opts.tokens, true)));
    const pid = info.pid;
    const cpu0 = processCpuMs(pid);
    const t0 = performance.now();
    let next = 0;
    let relayed = 0;
    await Promise.all(
      Array.from({ length: opts.clients }, async () => {
        while (next++ < opts.requests) {
          // not `relayed += await ...`: that reads `relayed` before the await, and the clients' counts overwrite each other
          const { events } = await call(info.url, info.apiKey, opts.tokens, true);
          relayed += events;
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const cpuMs = processCpuMs(pid) - cpu0;
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    return {
      database: opts.postgres ? "PostgreSQL" : "PGlite",
      nodes: opts.nodes,
      clients: opts.clients,
      requests: opts.requests,
      tokensPerRequest: opts.tokens,
      relayedTokens: relayed,
      tokensPerSecond: relayed / seconds,
      coordinatorCpuPerTokenUs: (cpuMs * 1000) / relayed,
      coordinatorCpuPercent: (cpuMs / (seconds * 1000)) * 100,
      coordinatorRssMiB: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024,
    };
  } finally {
    for (const s of sims) s.stop();
    await info.stop();
    await db?.cleanup();
  }
}
