/** A job's rows in the `jobs` table, and its metrics: running once output flows, final before the client hears the end. */
import type { Usage } from "@sharedllm/protocol";
import type { Db } from "../db/database.js";
import type { JobStatus } from "../db/schema.js";
import type { Metrics } from "../metrics.js";
import type { Job, JobRecords } from "./job.js";

export class JobTable implements JobRecords {
  constructor(
    private readonly db: Db,
    private readonly metrics: Metrics,
  ) {}

  async started(job: Job): Promise<void> {
    await this.db
      .insertInto("jobs")
      .values({ ...this.row(job), node_id: job.unit?.id ?? null, status: "running" })
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
