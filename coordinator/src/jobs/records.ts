/**
 * A job's rows in the `jobs` table, and its metrics: running once output flows, final before the
 * client hears the end. Each row names the coordinator process running it (its lease,
 * instance.ts): a job left running by a process that has gone is failed by another, never the
 * jobs of a replica still running them.
 */
import type { Usage } from "@sharedllm/protocol";
import type { Db } from "../db/database.js";
import type { JobStatus } from "../db/schema.js";
import type { Metrics } from "../metrics.js";
import type { Job, JobRecords } from "./job.js";

export class JobTable implements JobRecords {
  constructor(
    private readonly db: Db,
    private readonly metrics: Metrics,
    /** this coordinator process's lease id */
    private readonly instance: string,
  ) {}

  /**
   * Fails the jobs that coordinator processes left running when they stopped or died: at start,
   * those of every process but the `live` ones; later, those of the processes found `gone`.
   */
  static async failOrphaned(db: Db, holders: { live: readonly string[] } | { gone: readonly string[] }): Promise<number> {
    if ("gone" in holders && !holders.gone.length) return 0;
    const failed = await db
      .updateTable("jobs")
      .set({ status: "failed", error: "its coordinator stopped", finished_at: new Date() })
      .where("status", "=", "running")
      .where((eb) =>
        "gone" in holders
          ? eb("instance_id", "in", holders.gone)
          : eb.or([eb("instance_id", "is", null), eb("instance_id", "not in", holders.live)]),
      )
      .returning("id")
      .execute();
    return failed.length;
  }

  async started(job: Job): Promise<void> {
    await this.db
      .insertInto("jobs")
      .values({ ...this.row(job), node_id: job.unit?.id ?? null, status: "running", instance_id: this.instance })
      .execute();
  }

  async finished(job: Job, status: JobStatus, usage?: Usage, error?: string): Promise<void> {
    this.metrics.jobFinished(job.spec.model, status, usage);
    const final = {
      status,
      node_id: job.unit?.id ?? null,
      prompt_tokens: usage?.prompt_tokens ?? null,
      completion_tokens: usage?.completion_tokens ?? null,
      error: error ?? null,
      finished_at: new Date(),
    };
    await this.db
      .insertInto("jobs")
      .values({ ...this.row(job), ...final })
      .onConflict((c) => c.column("id").doUpdateSet(final))
      .execute();
  }

  private row(job: Job) {
    return { id: job.id, kind: job.kind, model: job.spec.model, api_key_id: job.spec.apiKeyId, stream: job.spec.start.stream };
  }
}
