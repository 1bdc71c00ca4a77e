/**
 * Audits (docs/verification.md): a share of paid jobs has its claimed output re-scored by an
 * auditor, a node this coordinator trusts that serves the same model file. Commit, then audit:
 *
 * - When a job is charged, each solo node's part of it may be picked for an audit, at a rate that
 *   depends on the node's record (new and suspect nodes more often), in the charge's own
 *   transaction, so a restart loses none. The node is told nothing: it cannot tell the jobs apart.
 * - Queued audits go to a trusted auditor with a free slot, one at a time per auditor, off the
 *   jobs' hot path. The auditor scores the claimed tokens at a few random positions; `judge`
 *   decides. An auditor that fails or goes away hands the audit back: that never counts against
 *   the audited node (its earnings only wait longer).
 * - A failed audit forfeits the node's unsettled earnings of the audit window (set aside, with the
 *   reason) and the receipts it has not signed yet, raises its suspicion (more audits, less work),
 *   and past a limit excludes it: its sessions end and its key may not register again until the
 *   operator clears it.
 */
import { randomInt, randomUUID } from "node:crypto";
import {
  type AuditError,
  type AuditResult,
  type AuditScore,
  type AuditStanding,
  type AuditStart,
  type AuditsResponse,
  type JobKind,
  MAX_AUDIT_POSITIONS,
  MAX_AUDIT_TOP_K,
  UNTOLD_TOKEN,
} from "@sharedllm/protocol";
import { type Kysely, sql } from "kysely";
import type { Logger } from "pino";
import type { Db } from "../db/database.js";
import type { Database } from "../db/schema.js";
import type { Fleet } from "../fleet.js";
import type { ConnectedNode } from "../units.js";

/** What decides an audit from the auditor's scores: pass, or fail with the reason. */
export type Judge = (a: {
  kind: JobKind;
  request: Record<string, unknown>;
  scores: readonly AuditScore[];
  /** the model file, and the auditor's backend (`cpu`, `cuda`...): the thresholds are calibrated per pair */
  modelSha256: string;
  backend: string;
}) => { pass: true } | { pass: false; reason: string };

export interface AuditOptions {
  /** node ids this coordinator trusts to audit (they must also say they audit, in their hello) */
  auditors: readonly string[];
  /** decides each audit */
  judge: Judge;
  /** share of an established node's paid jobs audited; default 0.5 */
  rate?: number;
  /** a node with fewer passed audits than this is new; default 5 */
  newNodeAudits?: number;
  /** share of a new node's jobs audited; default 1 */
  newRate?: number;
  /** share of a suspect node's jobs audited (one with failed audits not cleared); default 1 */
  suspectRate?: number;
  /** failed audits after which a node is excluded; default 2 */
  excludeAfter?: number;
  /** how long a node's earnings wait for audits before they may settle; default 10 min */
  windowMs?: number;
  /** positions of the output scored per audit; default 8 */
  positions?: number;
  /** how many of its top tokens the auditor ranks at each position (above any job's top_k); default 100 */
  topK?: number;
  /** an audit no auditor ran within this is given up, not blamed on the node; default 24 h */
  deadlineMs?: number;
  /** how often idle new and suspect nodes get a canary job (canaries.ts); 0: never; default 5 min */
  canaryEveryMs?: number;
  /** random in [0, 1): whether a job is audited (tests pin it); default crypto */
  random?: () => number;
}

/** A node's part of a paid job, as an audit sees it. */
export interface AuditCandidate {
  jobId: string;
  node: string;
  model: string;
  modelSha256: string;
  kind: JobKind;
  /** the engine request the node ran */
  request: Record<string, unknown>;
  /** the job's tokens up to the end of the node's part (ids, or UNTOLD_TOKEN) */
  output: readonly number[];
  /** where the node's part begins in `output` */
  from: number;
  /** the prompt tokens its receipt names, when its part began the job (then the auditor's count must not be lower) */
  promptTokens: number | undefined;
  promptHash: string;
  outputHash: string;
  /** a job the coordinator sent itself to check the node: always audited */
  canary?: boolean;
}

/**
 * Request fields that change the sampler beyond what an audit scores: such jobs are not audited
 * (a penalty still leaves the verdict's gross checks, verdict.ts).
 */
const UNSCORED_FIELDS = ["logit_bias", "response_format", "tools", "tool_choice"] as const;

function unscored(request: Record<string, unknown>): boolean {
  return UNSCORED_FIELDS.some((f) => request[f] !== undefined);
}

/** Prompt tokens a receipt may name above the auditor's count (a start token the engines add differently). */
const PROMPT_MARGIN = 2;

/** The most times an audit is handed to an auditor before it is given up (void: the node is not blamed). */
const MAX_ATTEMPTS = 5;
/** An audit an auditor holds longer than this goes back to the queue. */
const RUNNING_TIMEOUT_MS = 5 * 60_000;
const PUMP_INTERVAL_MS = 5_000;

export const DEFAULT_AUDIT_WINDOW_MS = 10 * 60_000;
/** An audit no auditor ran within this is given up (void), so the node's earnings are not held for ever. */
const DEFAULT_DEADLINE_MS = 24 * 3600_000;

export class Audits {
  private readonly trusted: ReadonlySet<string>;
  /** auditor id -> the audit it runs now, on which connection, since when */
  private readonly busy = new Map<string, { auditId: string; node: ConnectedNode; since: number }>();
  /** failed audits not cleared, by node (those with none are absent) */
  private readonly suspects = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private pumping: Promise<void> | undefined;
  private again = false;

  constructor(
    private readonly db: Db,
    private readonly fleet: Fleet,
    private readonly log: Logger,
    private readonly o: AuditOptions,
  ) {
    this.trusted = new Set(o.auditors.map((a) => a.toLowerCase()));
  }

  get canaryEveryMs(): number {
    return this.o.canaryEveryMs ?? 5 * 60_000;
  }

  get windowMs(): number {
    return this.o.windowMs ?? DEFAULT_AUDIT_WINDOW_MS;
  }

  /** A node's failed audits not cleared (its scheduling weight). */
  suspicionOf(nodeId: string): number {
    return this.suspects.get(nodeId.toLowerCase()) ?? 0;
  }

  /** Whether this node may audit: trusted here, and it says it audits. */
  isAuditor(n: ConnectedNode): boolean {
    return n.auditor && this.trusted.has(n.id);
  }

  /** Audits left running by an earlier process go back to the queue; then the queue is worked. */
  async start(): Promise<void> {
    await this.db.updateTable("audits").set({ status: "queued", auditor_id: null }).where("status", "=", "running").execute();
    const suspects = await this.db.selectFrom("node_standing").select(["node_id", "suspicion"]).where("suspicion", ">", 0).execute();
    for (const s of suspects) this.suspects.set(s.node_id, s.suspicion);
    this.timer = setInterval(() => this.pump(), PUMP_INTERVAL_MS);
    this.timer.unref();
    this.pump();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /**
   * In the transaction that charges a job: whether this node's part is audited, and if so its
   * audit, queued. Not audited: an auditor's own part; the told tokens of a part up to its first
   * untold one, when there are none (the auditor needs every id before a position); a request
   * whose fields change the sampler beyond what an auditor scores (UNSCORED_FIELDS).
   */
  async consider(tx: Kysely<Database>, c: AuditCandidate): Promise<boolean> {
    if (this.trusted.has(c.node.toLowerCase()) || unscored(c.request)) return false;
    const untold = c.output.indexOf(UNTOLD_TOKEN);
    const end = untold < 0 ? c.output.length : untold;
    if (end <= c.from) return false;
    // a browser node's record is its wallet's too, whichever of its session keys served
    const ids = tx.selectFrom("browser_delegations").select("wallet").where("session_key", "=", c.node.toLowerCase());
    const records = await tx
      .selectFrom("node_standing")
      .selectAll()
      .where((eb) => eb.or([eb("node_id", "=", c.node.toLowerCase()), eb("node_id", "in", ids)]))
      .execute();
    const standing = records.reduce<(typeof records)[number] | undefined>(
      (worst, r) => (!worst || r.suspicion > worst.suspicion ? r : worst),
      undefined,
    );
    const draw = this.o.random ? this.o.random() : randomInt(2 ** 32) / 2 ** 32;
    if (!c.canary && !(draw < this.rateFor(standing))) return false;
    const positions = pickPositions(c.from, end, this.o.positions ?? 8);
    await tx
      .insertInto("audits")
      .values({
        id: `audit_${randomUUID()}`,
        job_id: c.jobId,
        node_id: c.node.toLowerCase(),
        model: c.model,
        model_sha256: c.modelSha256,
        kind: c.kind,
        request: JSON.stringify(c.request),
        output: JSON.stringify(c.output.slice(0, end)),
        positions: JSON.stringify(positions),
        prompt_tokens: c.promptTokens ?? null,
        prompt_hash: c.promptHash,
        output_hash: c.outputHash,
        canary: c.canary ?? false,
        status: "queued",
      })
      .execute();
    return true;
  }

  /** Whether a node is new or suspect: it gets canaries too. */
  async wantsCanaries(nodeId: string): Promise<boolean> {
    const s = await this.db.selectFrom("node_standing").select(["passed", "suspicion"]).where("node_id", "=", nodeId).executeTakeFirst();
    return !s || s.suspicion > 0 || s.passed < (this.o.newNodeAudits ?? 5);
  }

  /** Whether some connected, trusted auditor serves this model file. */
  canAudit(sha256: string): boolean {
    return this.fleet.list().some((n) => this.isAuditor(n) && [...n.models.values()].some((m) => m.sha256 === sha256));
  }

  /** The audit rate for a node with this record. */
  rateFor(standing: { passed: number; suspicion: number } | undefined): number {
    if (standing && standing.suspicion > 0) return this.o.suspectRate ?? 1;
    if ((standing?.passed ?? 0) < (this.o.newNodeAudits ?? 5)) return this.o.newRate ?? 1;
    return this.o.rate ?? 0.5;
  }

  /** Hands queued audits to free auditors (again later if a pass is running now). */
  pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = this.dispatch()
      .catch((err) => this.log.error({ err }, "dispatching audits failed"))
      .finally(() => {
        this.pumping = undefined;
        if (this.again) {
          this.again = false;
          this.pump();
        }
      });
  }

  private async dispatch(): Promise<void> {
    const now = Date.now();
    // an auditor that holds an audit too long (hung) hands it back
    for (const [id, b] of this.busy) {
      if (now - b.since < RUNNING_TIMEOUT_MS) continue;
      this.busy.delete(id);
      b.node.send({ type: "audit.cancel", auditId: b.auditId });
      await this.requeue(b.auditId, `the auditor ${id} did not answer in time`);
    }
    // audits nobody could run for a day are given up: the node's earnings are not held for ever
    await this.db
      .updateTable("audits")
      .set({ status: "void", reason: "no auditor ran it in time", finished_at: new Date() })
      .where("status", "=", "queued")
      .where("created_at", "<", new Date(now - (this.o.deadlineMs ?? DEFAULT_DEADLINE_MS)))
      .execute();
    const free = this.fleet.list().filter((n) => this.isAuditor(n) && !this.busy.has(n.id) && n.available && n.active < n.slots);
    if (!free.length) return;
    const files = [...new Set(free.flatMap((n) => [...n.models.values()].map((m) => m.sha256)))];
    const queued = await this.db
      .selectFrom("audits")
      .select(["id", "node_id", "model", "model_sha256", "kind", "request", "output", "positions"])
      .where("status", "=", "queued")
      .where("model_sha256", "in", files)
      .orderBy("created_at")
      .limit(100)
      .execute();
    for (const a of queued) {
      const i = free.findIndex((n) => n.id !== a.node_id && [...n.models.values()].some((m) => m.sha256 === a.model_sha256));
      if (i < 0) continue;
      const auditor = free.splice(i, 1)[0] as ConnectedNode;
      const model = [...auditor.models.values()].find((m) => m.sha256 === a.model_sha256)?.id ?? a.model;
      // claimed only while still queued: another pass (or process) may have taken it
      const claimed = await this.db
        .updateTable("audits")
        .set({ status: "running", auditor_id: auditor.id, attempts: sql`attempts + 1`, started_at: new Date() })
        .where("id", "=", a.id)
        .where("status", "=", "queued")
        .returning("id")
        .executeTakeFirst();
      if (!claimed) continue;
      // the auditor may have gone while the row was written
      if (this.fleet.get(auditor.id) !== auditor) {
        await this.requeue(a.id, `the auditor ${auditor.id} went away`);
        continue;
      }
      this.busy.set(auditor.id, { auditId: a.id, node: auditor, since: Date.now() });
      const frame: AuditStart = {
        type: "audit.start",
        auditId: a.id,
        kind: a.kind as JobKind,
        request: { ...(JSON.parse(a.request) as Record<string, unknown>), model },
        claimed: JSON.parse(a.output) as number[],
        positions: JSON.parse(a.positions) as number[],
        topK: this.o.topK ?? MAX_AUDIT_TOP_K,
        sha256: a.model_sha256,
      };
      auditor.send(frame);
      if (!free.length) return;
    }
  }

  /** The operator's view: rates, auditors, totals, each node's record, and recent audits (a failure's with its evidence). */
  async overview(q: { node?: string; limit: number }): Promise<AuditsResponse> {
    const totals = { queued: 0, running: 0, passed: 0, failed: 0, void: 0 };
    for (const r of await this.db
      .selectFrom("audits")
      .select(["status", sql<string>`count(*)`.as("n")])
      .groupBy("status")
      .execute()) {
      totals[r.status] = Number(r.n);
    }
    const nodes = await this.db
      .selectFrom("node_standing")
      .selectAll()
      .$if(q.node !== undefined, (b) => b.where("node_id", "=", (q.node as string).toLowerCase()))
      .orderBy("suspicion", "desc")
      .orderBy("node_id")
      .execute();
    const recent = await this.db
      .selectFrom("audits")
      .selectAll()
      .$if(q.node !== undefined, (b) => b.where("node_id", "=", (q.node as string).toLowerCase()))
      .orderBy("created_at", "desc")
      .limit(q.limit)
      .execute();
    return {
      rates: { established: this.o.rate ?? 0.5, newNodes: this.o.newRate ?? 1, suspects: this.o.suspectRate ?? 1 },
      windowMs: this.windowMs,
      auditors: [...this.trusted].map((id) => ({ id, connected: !!this.fleet.get(id) })),
      totals,
      nodes: nodes.map((s) => ({
        node: s.node_id,
        passed: s.passed,
        failed: s.failed,
        suspicion: s.suspicion,
        excluded: s.excluded_at ? { at: new Date(s.excluded_at).toISOString(), reason: s.excluded_reason ?? "" } : null,
      })),
      recent: recent.map((a) => ({
        id: a.id,
        jobId: a.job_id,
        node: a.node_id,
        model: a.model,
        status: a.status,
        reason: a.reason,
        canary: a.canary,
        createdAt: new Date(a.created_at).toISOString(),
        finishedAt: a.finished_at ? new Date(a.finished_at).toISOString() : null,
        ...(a.status === "failed" && {
          evidence: {
            promptHash: a.prompt_hash,
            outputHash: a.output_hash,
            promptTokens: a.prompt_tokens,
            auditedPromptTokens: a.audited_prompt_tokens,
            positions: JSON.parse(a.positions) as number[],
            claimed: JSON.parse(a.output) as number[],
            scores: a.scores ? (JSON.parse(a.scores) as unknown[]) : [],
            auditor: a.auditor_id,
          },
        }),
      })),
    };
  }

  /** The operator clears a node: its suspicion and exclusion end (its record of passes and failures stays). False if it has none. */
  async clear(node: string): Promise<boolean> {
    const id = node.toLowerCase();
    const cleared = await this.db
      .updateTable("node_standing")
      .set({ suspicion: 0, excluded_at: null, excluded_reason: null, updated_at: new Date() })
      .where("node_id", "=", id)
      .returning("node_id")
      .executeTakeFirst();
    this.suspects.delete(id);
    const connected = this.fleet.get(id);
    if (connected) {
      connected.suspicion = 0;
      connected.rankChanged();
    }
    if (cleared) this.log.info({ nodeId: id }, "the operator cleared a node's audit suspicion");
    return !!cleared;
  }

  /** A node's connection closed: what it held as an auditor goes back to the queue. */
  auditorGone(node: ConnectedNode): void {
    const b = this.busy.get(node.id);
    if (b?.node !== node) return;
    this.busy.delete(node.id);
    this.requeue(b.auditId, `the auditor ${node.id} went away`).catch((err) => this.log.error({ err }, "requeueing an audit failed"));
  }

  /** An auditor could not run an audit: it goes back to the queue (never the audited node's fault). */
  async onError(from: string, f: AuditError): Promise<void> {
    if (this.busy.get(from)?.auditId !== f.auditId) return;
    this.busy.delete(from);
    await this.requeue(f.auditId, f.message);
    this.pump();
  }

  private async requeue(auditId: string, why: string): Promise<void> {
    const row = await this.db.selectFrom("audits").select("attempts").where("id", "=", auditId).executeTakeFirst();
    if (!row) return;
    const giveUp = row.attempts >= MAX_ATTEMPTS;
    this.log.warn({ auditId, why, attempts: row.attempts }, giveUp ? "audit given up: the node is not blamed" : "audit handed back");
    await this.db
      .updateTable("audits")
      .set(
        giveUp
          ? { status: "void", reason: `no auditor could run it: ${why}`, finished_at: new Date() }
          : { status: "queued", auditor_id: null },
      )
      .where("id", "=", auditId)
      .where("status", "=", "running")
      .execute();
  }

  /** An auditor's scores: checked against what it was asked, judged, and the verdict's consequences applied. */
  async onResult(from: string, f: AuditResult): Promise<void> {
    if (this.busy.get(from)?.auditId !== f.auditId) return;
    this.busy.delete(from);
    const a = await this.db.selectFrom("audits").selectAll().where("id", "=", f.auditId).executeTakeFirst();
    if (a?.status !== "running" || a.auditor_id !== from) return;
    const positions = JSON.parse(a.positions) as number[];
    const claimed = JSON.parse(a.output) as number[];
    // the auditor is trusted, but its answer must still be the one asked for
    if (f.scores.length !== positions.length || f.scores.some((s, i) => s.position !== positions[i])) {
      await this.requeue(a.id, "the auditor answered other positions");
      return this.pump();
    }
    const request = JSON.parse(a.request) as Record<string, unknown>;
    const backend = (this.fleet.get(from)?.engine ?? "").split("-").at(-1) ?? "";
    let verdict = this.o.judge({ kind: a.kind as JobKind, request, scores: f.scores, modelSha256: a.model_sha256, backend });
    if (verdict.pass && a.prompt_tokens !== null && a.prompt_tokens > f.promptTokens + PROMPT_MARGIN) {
      verdict = { pass: false, reason: `the receipt names ${a.prompt_tokens} prompt tokens; the prompt has ${f.promptTokens}` };
    }
    const reason = verdict.pass ? null : verdict.reason;
    // the user's prompt is not kept past the verdict (its hash is); the sampling fields are
    const { messages: _m, prompt: _p, ...sampling } = request;
    const standing = await this.db.transaction().execute(async (tx) => {
      await tx
        .updateTable("audits")
        .set({
          status: verdict.pass ? "passed" : "failed",
          reason,
          request: JSON.stringify(sampling),
          scores: JSON.stringify(f.scores),
          audited_prompt_tokens: f.promptTokens,
          finished_at: new Date(),
        })
        .where("id", "=", a.id)
        .execute();
      if (!verdict.pass) return this.penalise(tx, a, verdict.reason);
      return { ...(await this.record(tx, a.node_id, "passed")), excluded: false };
    });
    if (standing.suspicion > 0) this.suspects.set(a.node_id, standing.suspicion);
    const connected = this.fleet.get(a.node_id);
    if (connected) {
      connected.suspicion = standing.suspicion;
      connected.rankChanged();
    }
    const excluded = standing.excluded;
    this.log[verdict.pass ? "info" : "warn"](
      { auditId: a.id, jobId: a.job_id, nodeId: a.node_id, reason, claimed: claimed.length },
      verdict.pass ? "audit passed" : "audit failed",
    );
    if (excluded) this.fleet.get(a.node_id)?.disconnect("excluded after failed audits: the operator must clear this node");
    this.pump();
  }

  private async record(
    tx: Kysely<Database>,
    node: string,
    outcome: "passed" | "failed",
  ): Promise<{ suspicion: number; failed: number; excluded_at: Date | string | null }> {
    return tx
      .insertInto("node_standing")
      .values({
        node_id: node,
        passed: outcome === "passed" ? 1 : 0,
        failed: outcome === "failed" ? 1 : 0,
        suspicion: outcome === "failed" ? 1 : 0,
      })
      .onConflict((c) =>
        c
          .column("node_id")
          .doUpdateSet(
            outcome === "passed"
              ? { passed: sql`node_standing.passed + 1`, updated_at: new Date() }
              : { failed: sql`node_standing.failed + 1`, suspicion: sql`node_standing.suspicion + 1`, updated_at: new Date() },
          ),
      )
      .returning(["suspicion", "failed", "excluded_at"])
      .executeTakeFirstOrThrow();
  }

  /**
   * A failed audit: the node's earnings from the audit's window on (from one window before the
   * audited job: the entries the settlement gate held for it) that no batch took are set aside as
   * forfeited, the receipts it has not signed are withdrawn, its suspicion rises, and past the
   * limit it is excluded (sessions revoked).
   */
  private async penalise(
    tx: Kysely<Database>,
    a: { id: string; node_id: string; created_at: Date | string },
    reason: string,
  ): Promise<{ suspicion: number; excluded: boolean }> {
    const node = a.node_id;
    const forfeited = `forfeited: audit ${a.id} failed (${reason})`;
    const since = new Date(new Date(a.created_at).getTime() - this.windowMs);
    // a browser node's earnings are its wallet's entries (docs/browser-node.md): those of the jobs this node served
    const wallet = (await tx.selectFrom("browser_delegations").select("wallet").where("session_key", "=", node).executeTakeFirst())?.wallet;
    await tx
      .insertInto("set_aside_entries")
      .columns(["entry_id", "job_key", "reason"])
      .expression((eb) =>
        eb
          .selectFrom("ledger_entries as e")
          .select(["e.id", "e.job_id", sql.lit(forfeited).as("reason")])
          .where("e.kind", "=", "earn")
          .where("e.address", "=", wallet ?? node)
          .$if(wallet !== undefined, (q) =>
            q.where("e.job_id", "in", (eb) =>
              eb
                .selectFrom("receipts")
                .select("receipts.job_id")
                .where("receipts.node_address", "=", node)
                .where("receipts.status", "=", "accepted"),
            ),
          )
          .where("e.created_at", ">=", since)
          .where(({ not, exists, selectFrom }) =>
            not(exists(selectFrom("batch_entries as b").select("b.entry_id").whereRef("b.entry_id", "=", "e.id"))),
          ),
      )
      .onConflict((c) => c.column("entry_id").doNothing())
      .execute();
    await tx.deleteFrom("receipt_proposals").where("node_address", "=", node).execute();
    const standing = await this.record(tx, node, "failed");
    // a browser node's wallet keeps the record too: a new session key does not start it clean
    const walletStanding = wallet ? await this.record(tx, wallet, "failed") : undefined;
    const suspicion = Math.max(standing.suspicion, walletStanding?.suspicion ?? 0);
    if (standing.excluded_at || suspicion < (this.o.excludeAfter ?? 2)) return { suspicion, excluded: false };
    await tx
      .updateTable("node_standing")
      .set({ excluded_at: new Date(), excluded_reason: `${suspicion} failed audits, the last: ${reason}` })
      .where("node_id", "in", wallet ? [node, wallet] : [node])
      .execute();
    await tx
      .deleteFrom("node_sessions")
      .where((eb) =>
        eb.or([
          eb("node_id", "=", node),
          eb(
            "node_id",
            "in",
            eb
              .selectFrom("browser_delegations")
              .select("session_key")
              .where("wallet", "=", wallet ?? ""),
          ),
        ]),
      )
      .execute();
    return { suspicion, excluded: true };
  }
}

/** A node's record as the API shows it. */
export async function auditStanding(db: Kysely<Database>, node: string): Promise<AuditStanding> {
  const s = await db.selectFrom("node_standing").selectAll().where("node_id", "=", node.toLowerCase()).executeTakeFirst();
  return {
    passed: s?.passed ?? 0,
    failed: s?.failed ?? 0,
    suspicion: s?.suspicion ?? 0,
    excluded: s?.excluded_at ? { at: new Date(s.excluded_at).toISOString(), reason: s.excluded_reason ?? "" } : null,
  };
}

/** `count` distinct positions in [from, end), ascending, drawn so that a node cannot predict them. */
export function pickPositions(from: number, end: number, count: number): number[] {
  const span = end - from;
  const n = Math.min(span, count, MAX_AUDIT_POSITIONS);
  const picked = new Set<number>();
  while (picked.size < n) picked.add(from + randomInt(span));
  return [...picked].sort((a, b) => a - b);
}
