/**
 * Work receipts. When a paid job ends, the coordinator proposes to each serving node a receipt
 * built from its own metering, recorded with the charge (a restart forgets none, and a node gets
 * its proposals again when it reconnects); the node checks it against what it served and signs
 * it (EIP-712). A returned receipt is accepted only when the signature is the node's and
 * every field equals the proposal; then the node's share is credited in the journal, in the same
 * transaction (a browser node's, to the wallet that delegated to its session key). Anything else is kept as rejected, with the reason.
 */
import {
  type ReceiptRequest,
  receiptFromWire,
  receiptJobId,
  receiptToWire,
  splitCredits,
  type WorkReceipt,
  type WorkReceiptWire,
  workReceiptTypedData,
} from "@sharedllm/protocol";
import type { Kysely } from "kysely";
import { type Address, type Hex, recoverTypedDataAddress } from "viem";
import type { Database } from "../db/schema.js";

export interface PaidJob {
  jobId: string;
  /** sha256 of the served GGUF */
  modelSha256: string;
  promptTokens: number;
  completionTokens: number;
  /** what the user was charged */
  credits: bigint;
  /** who served it, with shares in basis points summing to 10000 (one member at 10000 for a solo node) */
  members: { node: Address; shareBps: number }[];
  /** the cluster head that ran it, when the members served layers of a split model */
  via?: string;
  /** what the receipt commits to: the job's prompt and the token ids the node streamed (promptHash, outputHash) */
  commits?: { promptHash: Hex; outputHash: Hex };
}

export type ReceiptOutcome = { accepted: true } | { accepted: false; reason: string };

/** How long a proposal waits for the node's signature (it is sent again each time the node connects). */
const PROPOSAL_TTL_MS = 24 * 3600_000;
/** Rejected receipts kept per sending node and hour: a node sending junk receipts fills no table. */
export const MAX_REJECTIONS_KEPT_PER_HOUR = 100;

export class Receipts {
  /** per sending node: when its hour of recorded rejections began, and how many */
  private readonly rejections = new Map<string, { since: number; count: number }>();

  constructor(
    private readonly db: Kysely<Database>,
    private readonly chainId: number,
    private readonly ledger: Address,
    /** this coordinator's address: receipts name it */
    readonly coordinator: Address,
    /** sends a receipt request to a node's control channel; false when the node is not connected */
    private readonly sendToNode: (node: Address, frame: ReceiptRequest) => boolean,
  ) {}

  /**
   * Records the receipts a paid job owes each member that served it, in `tx`: the transaction
   * that charges the user, so a charge is never without its receipts, even across a crash.
   * Returns the requests to send once that transaction has committed.
   */
  async propose(tx: Kysely<Database>, job: PaidJob): Promise<ReceiptRequest[]> {
    const shares = splitCredits(
      job.credits,
      job.members.map((m) => m.shareBps),
    );
    const issuedAt = BigInt(Math.floor(Date.now() / 1000));
    const requests = job.members.map((m, i): ReceiptRequest => {
      const receipt: WorkReceipt = {
        jobId: receiptJobId(job.jobId),
        node: m.node,
        coordinator: this.coordinator,
        model: `0x${job.modelSha256}`,
        promptTokens: job.promptTokens,
        completionTokens: job.completionTokens,
        shareBps: m.shareBps,
        credits: shares[i] ?? 0n,
        issuedAt,
        ...job.commits,
      };
      return this.request(job.jobId, receiptToWire(receipt), job.via ?? null);
    });
    if (requests.length) {
      await tx
        .insertInto("receipt_proposals")
        .values(
          requests.map((r) => ({
            job_id: r.receipt.jobId,
            node_address: r.receipt.node.toLowerCase(),
            receipt: JSON.stringify(r.receipt),
            job_ref: r.jobId,
            via: r.via ?? null,
          })),
        )
        .execute();
    }
    return requests;
  }

  /** Sends proposals to their nodes; one not connected now gets it when it connects again. */
  send(requests: readonly ReceiptRequest[]): void {
    for (const r of requests) this.sendToNode(r.receipt.node as Address, r);
  }

  /** Sends a node every proposal still waiting for its signature (it has just connected). */
  async resend(node: Address): Promise<void> {
    const rows = await this.db
      .selectFrom("receipt_proposals")
      .selectAll()
      .where("node_address", "=", node.toLowerCase())
      .where("created_at", ">", new Date(Date.now() - PROPOSAL_TTL_MS))
      .orderBy("created_at")
      .execute();
    this.send(rows.map((r) => this.request(r.job_ref, JSON.parse(r.receipt) as WorkReceiptWire, r.via)));
  }

  private request(jobId: string, receipt: WorkReceiptWire, via: string | null): ReceiptRequest {
    return {
      type: "receipt.request",
      jobId,
      receipt,
      domain: { chainId: this.chainId, verifyingContract: this.ledger },
      ...(via ? { via } : {}),
    };
  }

  /** A receipt a node sent back (or a refusal): verified, then recorded as accepted or rejected. */
  async submit(from: Address, wire: WorkReceiptWire, signature: Hex | null, refusal?: string): Promise<ReceiptOutcome> {
    const receipt = receiptFromWire(wire);
    // a node refuses only its own receipts: another's refusal would withdraw that node's proposal, and its pay
    if (refusal && receipt.node.toLowerCase() !== from.toLowerCase()) {
      return { accepted: false, reason: `a refusal from ${from.toLowerCase()} for ${receipt.node.toLowerCase()}'s receipt is ignored` };
    }
    const outcome = refusal
      ? { accepted: false as const, reason: `the node refused to sign: ${refusal}` }
      : await this.check(from, receipt, signature);
    const row = {
      job_id: receipt.jobId,
      node_address: receipt.node.toLowerCase(),
      receipt: JSON.stringify(wire),
      signature,
    };
    if (!outcome.accepted) {
      const kept = this.keepRejection(from);
      await this.db.transaction().execute(async (tx) => {
        if (kept) {
          await tx
            .insertInto("receipts")
            .values({ ...row, status: "rejected", reason: outcome.reason })
            .execute();
        }
        // a node that refuses to sign is not asked again
        if (refusal) await this.forget(tx, receipt);
      });
      return outcome;
    }
    try {
      await this.db.transaction().execute(async (tx) => {
        await tx
          .insertInto("receipts")
          .values({ ...row, status: "accepted", reason: null })
          .execute();
        // the proposal is taken in this transaction: one withdrawn meanwhile (a failed audit) pays nothing
        if (!(await this.forget(tx, receipt))) throw new Withdrawn();
        if (receipt.credits > 0n) {
          // a browser node's session key earns for the wallet that delegated to it (docs/browser-node.md)
          const delegation = await tx
            .selectFrom("browser_delegations")
            .select("wallet")
            .where("session_key", "=", receipt.node.toLowerCase())
            .executeTakeFirst();
          await tx
            .insertInto("ledger_entries")
            .values({
              address: delegation?.wallet ?? receipt.node.toLowerCase(),
              kind: "earn",
              amount: receipt.credits,
              job_id: receipt.jobId,
            })
            .execute();
        }
      });
    } catch (err) {
      // withdrawn, or the unique index: another copy of this receipt won the race
      const reason =
        err instanceof Withdrawn
          ? `no receipt is requested from this node for job ${receipt.jobId} any more`
          : `replayed: job ${receipt.jobId} was already paid to this node (${(err as Error).message})`;
      await this.db
        .insertInto("receipts")
        .values({ ...row, status: "rejected", reason })
        .execute();
      return { accepted: false, reason };
    }
    return outcome;
  }

  /** Drops the proposal; false when there was none. */
  private async forget(tx: Kysely<Database>, receipt: WorkReceipt): Promise<boolean> {
    const gone = await tx
      .deleteFrom("receipt_proposals")
      .where("job_id", "=", receipt.jobId)
      .where("node_address", "=", receipt.node.toLowerCase())
      .returning("job_id")
      .executeTakeFirst();
    return gone !== undefined;
  }

  /** Whether another rejected receipt from this node is recorded, within MAX_REJECTIONS_KEPT_PER_HOUR. */
  private keepRejection(from: Address, now = Date.now()): boolean {
    if (this.rejections.size > 10_000) for (const [n, w] of this.rejections) if (now - w.since >= 3600_000) this.rejections.delete(n);
    const node = from.toLowerCase();
    const w = this.rejections.get(node);
    if (!w || now - w.since >= 3600_000) {
      this.rejections.set(node, { since: now, count: 1 });
      return true;
    }
    w.count += 1;
    return w.count <= MAX_REJECTIONS_KEPT_PER_HOUR;
  }

  private async check(from: Address, receipt: WorkReceipt, signature: Hex | null): Promise<ReceiptOutcome> {
    if (!signature) return { accepted: false, reason: "no signature" };
    const signer = await recoverTypedDataAddress({
      ...workReceiptTypedData(receipt, { chainId: this.chainId, verifyingContract: this.ledger }),
      signature,
    }).catch(() => undefined);
    if (!signer || signer.toLowerCase() !== receipt.node.toLowerCase() || signer.toLowerCase() !== from.toLowerCase()) {
      return { accepted: false, reason: `signature is not by the node (signer ${signer ?? "unrecoverable"}, node ${receipt.node})` };
    }
    const proposal = await this.db
      .selectFrom("receipt_proposals")
      .select(["receipt", "created_at"])
      .where("job_id", "=", receipt.jobId)
      .where("node_address", "=", receipt.node.toLowerCase())
      .executeTakeFirst();
    if (!proposal || proposal.created_at.getTime() < Date.now() - PROPOSAL_TTL_MS) {
      const paid = await this.db
        .selectFrom("receipts")
        .select("id")
        .where("job_id", "=", receipt.jobId)
        .where("node_address", "=", receipt.node.toLowerCase())
        .where("status", "=", "accepted")
        .executeTakeFirst();
      return {
        accepted: false,
        reason: paid
          ? `replayed: job ${receipt.jobId} was already paid to this node`
          : `no receipt was requested from this node for job ${receipt.jobId}`,
      };
    }
    const expected = receiptFromWire(JSON.parse(proposal.receipt) as WorkReceiptWire);
    for (const field of Object.keys(expected) as (keyof WorkReceipt)[]) {
      const a = String(expected[field]).toLowerCase();
      const b = String(receipt[field]).toLowerCase();
      if (a !== b) return { accepted: false, reason: `${field} ${b} does not match the coordinator's metering (${a})` };
    }
    return { accepted: true };
  }
}

/** The proposal a receipt answers was withdrawn while it was checked. */
class Withdrawn extends Error {}
