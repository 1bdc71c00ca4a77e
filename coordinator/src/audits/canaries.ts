/**
 * Canary jobs (docs/verification.md): the coordinator sends new and suspect nodes jobs of its own
 * while they are idle, so that a node that gets few paid jobs is still audited. A canary is an
 * ordinary chat request (its prompt made from a few parts at random, greedy, a random length) on
 * the ordinary job path, pinned to the node: its frames are those of any job. It is not charged,
 * and always audited.
 */
import { randomInt, randomUUID } from "node:crypto";
import type { Usage } from "@sharedllm/protocol";
import { outputHash, promptHash } from "@sharedllm/protocol";
import type { FastifyBaseLogger } from "fastify";
import type { ApiKeyInfo } from "../apiKeys.js";
import type { Db } from "../db/database.js";
import type { Fleet } from "../fleet.js";
import type { JobCredits, PaidPart } from "../jobs/job.js";
import type { Jobs } from "../jobs/jobs.js";
import type { Audits } from "./audits.js";

const SUBJECTS = ["a lighthouse", "the moon", "a river", "bread", "a library", "the wind", "a bicycle", "honey", "a clock", "snow"];
const TASKS = [
  "Write one sentence about",
  "Describe in a few words",
  "Give three facts about",
  "Write a short poem about",
  "Explain to a child",
];

/** The coordinator's own API key for canaries: it owns no wallet, and no secret ever leaves this process. */
const CANARY_KEY: ApiKeyInfo = { id: "key_audit_canaries", name: "audit canaries", policy: "site_only" };

export class Canaries {
  private timer: NodeJS.Timeout | undefined;
  /** nodes with a canary in flight */
  private readonly inFlight = new Set<string>();

  constructor(private readonly o: { db: Db; fleet: Fleet; jobs: Jobs; audits: Audits; log: FastifyBaseLogger; everyMs: number }) {}

  async start(): Promise<void> {
    await this.o.db
      .insertInto("api_keys")
      .values({ id: CANARY_KEY.id, name: CANARY_KEY.name, key_hash: `unusable-${randomUUID()}`, owner_address: null })
      .onConflict((c) => c.column("id").doNothing())
      .execute();
    this.timer = setInterval(() => void this.round().catch((err) => this.o.log.error({ err }, "sending canaries failed")), this.o.everyMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One canary to each idle new or suspect node whose model an auditor serves. */
  async round(): Promise<void> {
    const { fleet, audits } = this.o;
    for (const n of fleet.list()) {
      if (n.role !== "solo" || !n.accepting || n.active > 0 || this.inFlight.has(n.id) || audits.isAuditor(n)) continue;
      const model = [...n.models.values()].find((m) => audits.canAudit(m.sha256));
      if (!model || !(await audits.wantsCanaries(n.id))) continue;
      void this.send(n.id, model.id);
    }
  }

  private async send(node: string, model: string): Promise<void> {
    this.inFlight.add(node);
    const body = {
      model,
      messages: [{ role: "user", content: `${TASKS[randomInt(TASKS.length)]} ${SUBJECTS[randomInt(SUBJECTS.length)]}.` }],
      max_tokens: 16 + randomInt(48),
      temperature: 0,
    };
    try {
      await this.o.jobs.submit(
        {
          kind: "chat",
          body,
          apiKey: CANARY_KEY,
          signal: new AbortController().signal,
          log: this.o.log,
          only: node,
          credits: new CanaryAudit(this.o.db, this.o.audits, { node, model, body }),
        },
        { open() {}, chunk() {}, end() {}, result() {}, fail() {} },
      );
    } catch (err) {
      this.o.log.debug({ node, err: (err as Error).message }, "a canary could not run");
    } finally {
      this.inFlight.delete(node);
    }
  }
}

/** A canary's credits: nothing held or charged; at the end, its output is audited. */
class CanaryAudit implements JobCredits {
  constructor(
    private readonly db: Db,
    private readonly audits: Audits,
    private readonly job: { node: string; model: string; body: Record<string, unknown> },
  ) {}

  async hold(): Promise<void> {}

  async release(): Promise<void> {}

  async charge(usage: Usage, parts: readonly PaidPart[]): Promise<void> {
    const [part] = parts;
    if (parts.length !== 1 || !part?.modelSha256) return;
    const request = { ...this.job.body, max_tokens: part.completionTokens, n_predict: part.completionTokens };
    await this.db.transaction().execute((tx) =>
      this.audits.consider(tx, {
        jobId: `canary_${randomUUID()}`,
        node: this.job.node,
        model: this.job.model,
        modelSha256: part.modelSha256 as string,
        kind: "chat",
        request,
        output: part.output,
        from: 0,
        promptTokens: usage.prompt_tokens,
        promptHash: promptHash(request),
        outputHash: outputHash(part.output),
        canary: true,
      }),
    );
    this.audits.pump();
  }
}
