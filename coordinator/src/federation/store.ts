/**
 * What federation keeps in the database: the nonces of peers' signed calls (each accepted once
 * while its signature could be fresh, across restarts and replicas), and peers' transaction ids
 * with the first result given for each, so a repeated one does not run twice (for an hour); and
 * every job forwarded to a peer or run here for one, with the peer, the transaction id and the
 * serving site's receipt for it (on the origin, with its verdict on it). Purges go by the database's clock, which every
 * replica shares, not by a replica's own.
 */
import type { FederationReceiptWire } from "@sharedllm/protocol";
import { sql } from "kysely";
import type { Address } from "viem";
import type { Db } from "../db/database.js";
import type { FederatedJobsTable } from "../db/schema.js";

export class FederationNonces {
  constructor(private readonly db: Db) {}

  /** false when this peer already used the nonce */
  async remember(peer: string, nonce: string, expiresAt: Date): Promise<boolean> {
    const fresh = await this.db
      .insertInto("federation_nonces")
      .values({ peer: peer.toLowerCase(), nonce, expires_at: expiresAt })
      .onConflict((c) => c.columns(["peer", "nonce"]).doNothing())
      .returning("nonce")
      .executeTakeFirst();
    return Boolean(fresh);
  }

  /** Forgets nonces whose signatures can no longer be fresh: expired a minute ago by the database's clock. */
  async purge(): Promise<void> {
    await this.db.deleteFrom("federation_nonces").where("expires_at", "<", sql<Date>`now() - interval '60 seconds'`).execute();
  }
}

export type TransactionStart = { first: true } | { first: false; result: string | null };

export class FederationTransactions {
  constructor(private readonly db: Db) {}

  /** Claims (peer, txid): the first caller runs it; later ones get its result (null while it runs). */
  async begin(peer: string, txid: string): Promise<TransactionStart> {
    const claimed = await this.db
      .insertInto("federation_transactions")
      .values({ peer: peer.toLowerCase(), txid })
      .onConflict((c) => c.columns(["peer", "txid"]).doNothing())
      .returning("txid")
      .executeTakeFirst();
    if (claimed) return { first: true };
    const row = await this.db
      .selectFrom("federation_transactions")
      .select("result")
      .where("peer", "=", peer.toLowerCase())
      .where("txid", "=", txid)
      .executeTakeFirstOrThrow();
    return { first: false, result: row.result };
  }

  /**
   * Forgets transactions begun over an hour ago (by the database's clock), with the output they
   * kept for a repeat: an origin repeats a transaction id within seconds, not hours.
   */
  async purge(): Promise<void> {
    await this.db.deleteFrom("federation_transactions").where("created_at", "<", sql<Date>`now() - interval '1 hour'`).execute();
  }

  /** Forgets a claim of (peer, txid) that did not run (its request was refused). */
  async forget(peer: string, txid: string): Promise<void> {
    await this.db
      .deleteFrom("federation_transactions")
      .where("peer", "=", peer.toLowerCase())
      .where("txid", "=", txid)
      .where("result", "is", null)
      .execute();
  }

  /** Records the first result of (peer, txid); it is what a repeat gets. */
  async finish(peer: string, txid: string, result: string): Promise<void> {
    await this.db
      .updateTable("federation_transactions")
      .set({ result, finished_at: new Date() })
      .where("peer", "=", peer.toLowerCase())
      .where("txid", "=", txid)
      .where("result", "is", null)
      .execute();
  }
}

export type FederatedJobStatus = FederatedJobsTable["status"];

/** The log of forwarded jobs, both ways (`federated_jobs`). */
/** How long one sum of the forwarded jobs' traffic is reused. */
const TRAFFIC_CACHE_MS = 1_000;

export class FederatedJobs {
  constructor(private readonly db: Db) {}

  async started(r: { direction: "in" | "out"; peer: string; txid: string; jobId: string; model: string }): Promise<void> {
    await this.db
      .insertInto("federated_jobs")
      .values({ direction: r.direction, peer: r.peer.toLowerCase(), txid: r.txid, job_id: r.jobId, model: r.model, status: "running" })
      .onConflict((c) => c.columns(["direction", "peer", "txid"]).doNothing())
      .execute();
  }

  /** The id of the job run here for a peer's (known once it started). */
  async jobId(r: { direction: "in" | "out"; peer: string; txid: string }, jobId: string): Promise<void> {
    await this.db
      .updateTable("federated_jobs")
      .set({ job_id: jobId })
      .where("direction", "=", r.direction)
      .where("peer", "=", r.peer.toLowerCase())
      .where("txid", "=", r.txid)
      .execute();
  }

  /** The job's end; on the serving side (in), with the receipt this site signed to the origin for it. */
  async finished(
    r: { direction: "in" | "out"; peer: string; txid: string },
    status: Exclude<FederatedJobStatus, "running">,
    usage?: { prompt_tokens: number; completion_tokens: number },
    error?: string,
    signed?: { receipt: FederationReceiptWire; signature: string },
  ): Promise<void> {
    await this.db
      .updateTable("federated_jobs")
      .set({
        status,
        prompt_tokens: usage?.prompt_tokens ?? null,
        completion_tokens: usage?.completion_tokens ?? null,
        error: error ?? null,
        finished_at: new Date(),
        ...(signed && {
          receipt: JSON.stringify(signed.receipt),
          receipt_signature: signed.signature,
          receipt_credits: BigInt(signed.receipt.credits),
        }),
      })
      .where("direction", "=", r.direction)
      .where("peer", "=", r.peer.toLowerCase())
      .where("txid", "=", r.txid)
      .where("status", "=", "running")
      .execute();
  }

  /** Keeps the serving site's receipt for a job forwarded there, and whether it held (then its credits count). */
  async receipt(
    r: { peer: string; txid: string },
    got: { receipt?: FederationReceiptWire; signature?: string },
    verdict: { accepted: true; credits: bigint } | { accepted: false; reason: string },
  ): Promise<void> {
    await this.db
      .updateTable("federated_jobs")
      .set({
        receipt: got.receipt ? JSON.stringify(got.receipt) : null,
        receipt_signature: got.signature ?? null,
        receipt_credits: verdict.accepted ? verdict.credits : null,
        receipt_status: verdict.accepted ? "accepted" : "rejected",
        receipt_reason: verdict.accepted ? null : verdict.reason,
      })
      .where("direction", "=", "out")
      .where("peer", "=", r.peer.toLowerCase())
      .where("txid", "=", r.txid)
      .execute();
  }

  /** What this site accepts owing each peer: the credits of every receipt that held, per peer. */
  async accepted(): Promise<Map<Address, bigint>> {
    const rows = await this.db
      .selectFrom("federated_jobs")
      .select(["peer", sql<string>`sum(receipt_credits)`.as("total")])
      .where("direction", "=", "out")
      .where("receipt_status", "=", "accepted")
      .groupBy("peer")
      .execute();
    return new Map(rows.map((r) => [r.peer as Address, BigInt(r.total)]));
  }

  private lastTraffic?: { at: number; value: Promise<Map<Address, PeerTraffic>> };

  /**
   * Each peer's traffic both ways, as logged: jobs, and credits by the receipts (out: those this
   * site accepted from the peer; in: those it signed to the peer). A public view and every scrape
   * ask for it: the sums are made at most once per TRAFFIC_CACHE_MS.
   */
  traffic(): Promise<Map<Address, PeerTraffic>> {
    const now = Date.now();
    if (this.lastTraffic && now - this.lastTraffic.at < TRAFFIC_CACHE_MS) return this.lastTraffic.value;
    const value = this.sumTraffic();
    this.lastTraffic = { at: now, value };
    value.catch(() => {
      if (this.lastTraffic?.value === value) this.lastTraffic = undefined;
    });
    return value;
  }

  private async sumTraffic(): Promise<Map<Address, PeerTraffic>> {
    const rows = await this.db
      .selectFrom("federated_jobs")
      .select([
        "peer",
        "direction",
        sql<string>`count(*)`.as("jobs"),
        sql<string | null>`sum(case when direction = 'in' or receipt_status = 'accepted' then receipt_credits end)`.as("credits"),
      ])
      .groupBy(["peer", "direction"])
      .execute();
    const out = new Map<Address, PeerTraffic>();
    for (const r of rows) {
      const t = out.get(r.peer as Address) ?? { jobs: { out: 0, in: 0 }, credits: { out: 0n, in: 0n } };
      t.jobs[r.direction] = Number(r.jobs);
      t.credits[r.direction] = BigInt(r.credits ?? 0);
      out.set(r.peer as Address, t);
    }
    return out;
  }
}

/** One peer's forwarded jobs and what the sites owe each other for them. */
export interface PeerTraffic {
  jobs: { out: number; in: number };
  credits: { out: bigint; in: bigint };
}
