/**
 * The node's side of work receipts: it remembers what it served (tokens, model) for a while, and
 * signs a receipt the coordinator proposes only when it matches that record, once per job.
 */
import {
  type ReceiptFrame,
  type ReceiptRequest,
  receiptFromWire,
  receiptJobId,
  WORK_RECEIPT_TYPES,
  workReceiptDomain,
} from "@sharedllm/protocol";
import type { LocalAccount } from "viem";

interface Served {
  modelSha256: string;
  promptTokens: number;
  completionTokens: number;
  /** a job given up before its end and continued elsewhere: the node streamed at most `completionTokens` and saw no usage */
  part?: true;
  at: number;
}

/** How long a served job can still be receipted. */
const KEEP_MS = 60 * 60_000;

export class ReceiptSigner {
  private readonly served = new Map<string, Served>();

  constructor(
    private readonly account: LocalAccount,
    /** a worker signs for jobs of a cluster head it currently serves (it cannot see their tokens) */
    private readonly servesHead: (head: string) => boolean = () => false,
  ) {}

  record(jobId: string, modelSha256: string, usage: { prompt_tokens?: number; completion_tokens?: number }): void {
    this.keep(jobId, { modelSha256, promptTokens: usage.prompt_tokens ?? 0, completionTokens: usage.completion_tokens ?? 0 });
  }

  /** A job this node streamed `tokens` of before it was continued elsewhere (docs/continuation.md). */
  recordPart(jobId: string, modelSha256: string, tokens: number): void {
    this.keep(jobId, { modelSha256, promptTokens: 0, completionTokens: tokens, part: true });
  }

  private keep(jobId: string, served: Omit<Served, "at">): void {
    const now = Date.now();
    for (const [id, s] of this.served) {
      if (now - s.at < KEEP_MS) break; // insertion order: the rest are newer
      this.served.delete(id);
    }
    this.served.set(jobId, { ...served, at: now });
  }

  async sign(req: ReceiptRequest): Promise<ReceiptFrame> {
    const refuse = (refused: string): ReceiptFrame => ({ type: "receipt", receipt: req.receipt, signature: null, refused });
    const r = receiptFromWire(req.receipt);
    if (r.jobId !== receiptJobId(req.jobId)) return refuse("the receipt's jobId is not this job's");
    if (r.node.toLowerCase() !== this.account.address.toLowerCase()) return refuse(`the receipt names node ${r.node}`);
    const mine = this.served.get(req.jobId);
    if (!mine) {
      if (req.via && this.servesHead(req.via.toLowerCase())) return this.signed(req);
      return refuse(`this node has no record of serving job ${req.jobId}`);
    }
    if (r.model.toLowerCase() !== `0x${mine.modelSha256}`) return refuse("the receipt names another model");
    // of a part, the node knows only how many tokens it streamed: it signs for no more
    if (mine.part && r.completionTokens > mine.completionTokens) {
      return refuse(`${r.completionTokens} completion tokens are more than this node streamed (${mine.completionTokens})`);
    }
    if (!mine.part && (r.promptTokens !== mine.promptTokens || r.completionTokens !== mine.completionTokens)) {
      return refuse(
        `token counts ${r.promptTokens}+${r.completionTokens} differ from what this node served (${mine.promptTokens}+${mine.completionTokens})`,
      );
    }
    this.served.delete(req.jobId);
    return this.signed(req);
  }

  private async signed(req: ReceiptRequest): Promise<ReceiptFrame> {
    const signature = await this.account.signTypedData({
      domain: workReceiptDomain(req.domain.chainId, req.domain.verifyingContract),
      types: WORK_RECEIPT_TYPES,
      primaryType: "WorkReceipt",
      message: receiptFromWire(req.receipt),
    });
    return { type: "receipt", receipt: req.receipt, signature };
  }
}
