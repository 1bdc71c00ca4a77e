/**
 * Prometheus metrics of one coordinator, in a registry of its own (no globals):
 * fleet gauges read at scrape time, job and token counters bumped as jobs end.
 */
import { Counter, Gauge, Registry, Summary } from "prom-client";
import type { JobStatus } from "./db/schema.js";
import type { Fleet } from "./fleet.js";

export class Metrics {
  readonly registry = new Registry();
  private readonly jobs: Counter<"status" | "model">;
  private readonly tokens: Counter<"type" | "model">;
  private readonly scheduling: Summary;
  private readonly continuations: Counter<"cause">;
  private readonly continuationGap: Summary;
  private readonly yields: Counter<"cause">;
  private readonly forwarded: Counter<"peer" | "direction" | "status">;
  private readonly refusals: Counter<"reason">;
  /** how many jobs wait their turn for a unit now (jobs/queue.ts) */
  private waitingNow: () => number = () => 0;

  constructor(fleet: Fleet) {
    const registers = [this.registry];
    const waiting = () => this.waitingNow();
    new Gauge({
      name: "sharedllm_nodes_online",
      help: "nodes connected over the control channel",
      registers,
      collect() {
        this.set(fleet.size);
      },
    });
    new Gauge({
      name: "sharedllm_jobs_active",
      help: "jobs dispatched to nodes and not finished",
      registers,
      collect() {
        this.set(fleet.list().reduce((sum, n) => sum + n.active, 0));
      },
    });
    new Gauge({
      name: "sharedllm_jobs_waiting",
      help: "jobs waiting their turn for a node with room",
      registers,
      collect() {
        this.set(waiting());
      },
    });
    new Gauge({
      name: "sharedllm_fleet_tokens_per_second",
      help: "sum of the nodes' recent decode speeds, from heartbeats",
      registers,
      collect() {
        this.set(fleet.list().reduce((sum, n) => sum + (n.heartbeat?.tokensPerSecond ?? 0), 0));
      },
    });
    this.jobs = new Counter({ name: "sharedllm_jobs_total", help: "jobs by final status", labelNames: ["status", "model"], registers });
    this.tokens = new Counter({ name: "sharedllm_tokens_total", help: "tokens served", labelNames: ["type", "model"], registers });
    this.yields = new Counter({
      name: "sharedllm_yields_total",
      help: "times a node gave its jobs in flight up for its owner, by cause (paused, owner_busy, on_battery; a worker: whatever stopped it)",
      labelNames: ["cause"],
      registers,
    });
    this.forwarded = new Counter({
      name: "sharedllm_federated_jobs_total",
      help: "jobs forwarded to a peer site (out) or run here for one (in), by peer and final status",
      labelNames: ["peer", "direction", "status"],
      registers,
    });
    this.refusals = new Counter({
      name: "sharedllm_federation_refusals_total",
      help: "jobs not forwarded, or forwarded jobs refused, by reason (site_only, own_nodes, outbound_off, inbound_off, over_cap, no_peer)",
      labelNames: ["reason"],
      registers,
    });
    this.scheduling = new Summary({
      name: "sharedllm_schedule_seconds",
      help: "time to choose a node for a job",
      percentiles: [0.5, 0.9, 0.99],
      maxAgeSeconds: 600,
      ageBuckets: 5,
      registers,
    });
    this.continuations = new Counter({
      name: "sharedllm_continuations_total",
      help: "jobs continued on another unit after theirs failed mid-job, by cause",
      labelNames: ["cause"],
      registers,
    });
    this.continuationGap = new Summary({
      name: "sharedllm_continuation_gap_seconds",
      help: "time from a unit failing mid-job to the next token from the unit continuing it",
      percentiles: [0.5, 0.95],
      maxAgeSeconds: 3600,
      ageBuckets: 5,
      registers,
    });
  }

  /** The jobs waiting their turn for a unit are counted by `count` (read at scrape time). */
  countWaiting(count: () => number): void {
    this.waitingNow = count;
  }

  continued(cause: string): void {
    this.continuations.inc({ cause });
  }

  resumed(gapSeconds: number): void {
    this.continuationGap.observe(gapSeconds);
  }

  scheduled(seconds: number): void {
    this.scheduling.observe(seconds);
  }

  /** A forwarded job ended, on the origin (out) or the serving site (in). */
  federatedJob(peer: string, direction: "in" | "out", status: string): void {
    this.forwarded.inc({ peer, direction, status });
  }

  /**
   * What the sites owe each other, read from the log of forwarded jobs at scrape time: credits by
   * the federation receipts, out (owed to the peer) and in (owed by it).
   */
  federationCredits(read: () => Promise<Map<string, { credits: { out: bigint; in: bigint } }>>): void {
    new Gauge({
      name: "sharedllm_federation_credits",
      help: "credits owed between this site and a peer by the federation receipts: out, to the peer; in, by the peer",
      labelNames: ["peer", "direction"],
      registers: [this.registry],
      async collect() {
        // a failed read keeps the last figures rather than failing the whole scrape
        const traffic = await read().catch(() => undefined);
        if (!traffic) return;
        this.reset();
        for (const [peer, t] of traffic) {
          // a gauge is a float: exact up to 2^53 smallest units, which a Prometheus figure does not need past
          this.set({ peer, direction: "out" }, Number(t.credits.out));
          this.set({ peer, direction: "in" }, Number(t.credits.in));
        }
      },
    });
  }

  /** A job was not forwarded (or a forwarded one refused) for `reason`. */
  federationRefused(reason: string): void {
    this.refusals.inc({ reason });
  }

  /** A node yielded to its owner: its jobs in flight were handed off. */
  yielded(cause: string): void {
    this.yields.inc({ cause });
  }

  jobFinished(model: string, status: JobStatus, usage?: { prompt_tokens: number; completion_tokens: number }): void {
    this.jobs.inc({ status, model });
    if (usage) {
      this.tokens.inc({ type: "prompt", model }, usage.prompt_tokens);
      this.tokens.inc({ type: "completion", model }, usage.completion_tokens);
    }
  }
}
