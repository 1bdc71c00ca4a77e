/**
 * Work receipts (DESIGN.md section 6). When a paid job ends, the coordinator proposes to each
 * serving node a receipt built from its own metering; the node checks it against what it served
 * and signs it (EIP-712). A returned receipt is accepted only when the signature is the node's and
 * every field equals the proposal; then the node's share is credited in the journal, in the same
 * transaction. Anything else is kept as rejected, with the reason.
 */
import {
  type ReceiptRequest,
  receiptFromWire,
  receiptJobId,
  receiptToWire,
  splitCredits,
  WORK_RECEIPT_TYPES,
  type WorkReceipt,
  type WorkReceiptWire,
  workReceiptDomain,
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
}

export type ReceiptOutcome = { accepted: true } | { accepted: false; reason: string };

/** How long a proposal waits for the node's signature. */
const PROPOSAL_TTL_MS = 10 * 60_000;

export class Receipts {
  private readonly proposals = new Map<string, { receipt: WorkReceipt; until: number }>();

  constructor(
    private readonly db: Kysely<Database>,
    private readonly chainId: number,
    private readonly ledger: Address,
    private readonly coordinator: Address,
    /** sends a receipt request to a node's control channel; false when the node is not connected */
    private readonly sendToNode: (node: Address, frame: ReceiptRequest) => boolean,
  ) {}

  get domain() {
    return workReceiptDomain(this.chainId, this.ledger);
  }

  /** Proposes receipts for a paid job to every member that served it. */
  request(job: PaidJob): void {
    const now = Date.now();
    for (const [key, p] of this.proposals) if (p.until < now) this.proposals.delete(key);
    const shares = splitCredits(
      job.credits,
      job.members.map((m) => m.shareBps),
    );
    job.members.forEach((m, i) => {
      const receipt: WorkReceipt = {
        jobId: receiptJobId(job.jobId),
        node: m.node,
        coordinator: this.coordinator,
        model: `0x${job.modelSha256}`,
        promptTokens: job.promptTokens,
        completionTokens: job.completionTokens,
        shareBps: m.shareBps,
        credits: shares[i] ?? 0n,
        issuedAt: BigInt(Math.floor(now / 1000)),
      };
      this.proposals.set(key(receipt.jobId, m.node), { receipt, until: now + PROPOSAL_TTL_MS });
      this.sendToNode(m.node, {
        type: "receipt.request",
        jobId: job.jobId,
        receipt: receiptToWire(receipt),
        domain: { chainId: this.chainId, verifyingContract: this.ledger },
        ...(job.via ? { via: job.via } : {}),
      });
    });
  }

  /** A receipt a node sent back (or a refusal): verified, then recorded as accepted or rejected. */
  async submit(from: Address, wire: WorkReceiptWire, signature: Hex | null, refusal?: string): Promise<ReceiptOutcome> {
    const receipt = receiptFromWire(wire);
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
      await this.db
        .insertInto("receipts")
        .values({ ...row, status: "rejected", reason: outcome.reason })
        .execute();
      return outcome;
    }
    try {
      await this.db.transaction().execute(async (tx) => {
        await tx
          .insertInto("receipts")
          .values({ ...row, status: "accepted", reason: null })
          .execute();
        if (receipt.credits > 0n) {
          await tx
            .insertInto("ledger_entries")
            .values({ address: receipt.node.toLowerCase(), kind: "earn", amount: receipt.credits, job_id: receipt.jobId })
            .execute();
        }
      });
    } catch (err) {
      // the unique index: another copy of this receipt won the race
      const reason = `replayed: job ${receipt.jobId} was already paid to this node (${(err as Error).message})`;
      await this.db
        .insertInto("receipts")
        .values({ ...row, status: "rejected", reason })
        .execute();
      return { accepted: false, reason };
    }
    this.proposals.delete(key(receipt.jobId, receipt.node));
    return outcome;
  }

  private async check(from: Address, receipt: WorkReceipt, signature: Hex | null): Promise<ReceiptOutcome> {
    if (!signature) return { accepted: false, reason: "no signature" };
    const signer = await recoverTypedDataAddress({
      domain: this.domain,
      types: WORK_RECEIPT_TYPES,
      primaryType: "WorkReceipt",
      message: receipt,
      signature,
    }).catch(() => undefined);
    if (!signer || signer.toLowerCase() !== receipt.node.toLowerCase() || signer.toLowerCase() !== from.toLowerCase()) {
      return { accepted: false, reason: `signature is not by the node (signer ${signer ?? "unrecoverable"}, node ${receipt.node})` };
    }
    const proposal = this.proposals.get(key(receipt.jobId, receipt.node));
    if (!proposal) {
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
    const expected = proposal.receipt;
    for (const field of Object.keys(expected) as (keyof WorkReceipt)[]) {
      const a = String(expected[field]).toLowerCase();
      const b = String(receipt[field]).toLowerCase();
      if (a !== b) return { accepted: false, reason: `${field} ${b} does not match the coordinator's metering (${a})` };
    }
    return { accepted: true };
  }
}

function key(jobId: Hex, node: Address): string {
  return `${jobId}:${node.toLowerCase()}`;
}
