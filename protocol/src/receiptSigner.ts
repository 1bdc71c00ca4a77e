/**
 * The node's side of work receipts: it remembers what it served (tokens, model) for a while, and
 * signs a receipt the coordinator proposes only when it matches that record, once per job. Native
 * nodes sign with their node key, browser nodes with their session key.
 */
import type { Hex, LocalAccount } from "viem";
import type { ReceiptFrame, ReceiptRequest } from "./control.js";
import { outputHash, receiptFromWire, receiptJobId, workReceiptTypedData } from "./ledger.js";

interface Served {
  modelSha256: string;
  /** the job's promptHash, and the tokens it streamed (ids, or UNTOLD_TOKEN): what a receipt commits to */
  promptHash: Hex;
  output: readonly number[];
  promptTokens: number;
  /** the completion it signs for: the tokens it streamed, and an end token its engine counted in no event */
  completionTokens: number;
  /** a job given up before its end and continued elsewhere: the node saw no usage, and is paid for a prefix of its output */
  part?: true;
  at: number;
}

/** What a node served of a job: its model file, the job's prompt commitment and the tokens it streamed. */
export interface ServedJob {
  modelSha256: string;
  promptHash: Hex;
  output: readonly number[];
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

  record(jobId: string, served: ServedJob, usage: { prompt_tokens?: number; completion_tokens?: number }): void {
    const streamed = served.output.length;
    const completionTokens = streamed + ((usage.completion_tokens ?? 0) > streamed ? 1 : 0);
    this.keep(jobId, { ...served, promptTokens: usage.prompt_tokens ?? 0, completionTokens });
  }

  /** A job this node streamed part of before it was continued elsewhere (docs/continuation.md). */
  recordPart(jobId: string, served: ServedJob): void {
    this.keep(jobId, { ...served, promptTokens: 0, completionTokens: served.output.length, part: true });
  }

  private keep(jobId: string, served: Omit<Served, "at">): void {
    const now = Date.now();
    for (const [id, s] of this.served) {
      if (now - s.at < KEEP_MS) break; // insertion order: the rest are newer
      this.served.delete(id);
    }
    this.served.set(jobId, { ...served, at: now });
  }

  /**
   * Signs a proposed receipt that matches what this node served: its model, the tokens it
   * streamed (counted as the coordinator counts them: every one streamed, of a part a prefix) and,
   * in a version 2 receipt, the prompt and those very tokens (promptHash, outputHash).
   */
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
    // what it served, it signs for only with the commitments (an audit holds it to its own output, no other)
    if (r.promptHash === undefined || r.outputHash === undefined) return refuse("the receipt commits to no prompt and output");
    // less than it served it signs (a client that left as the job ended is charged what it was sent), never more
    if (r.completionTokens > mine.completionTokens) {
      return refuse(`${r.completionTokens} completion tokens, but this node streamed ${mine.completionTokens}`);
    }
    if (!mine.part && r.promptTokens > mine.promptTokens) {
      return refuse(`${r.promptTokens} prompt tokens, more than this node served (${mine.promptTokens})`);
    }
    if (r.promptHash.toLowerCase() !== mine.promptHash) return refuse("the receipt names another prompt");
    if (r.outputHash.toLowerCase() !== outputHash(mine.output.slice(0, r.completionTokens))) {
      return refuse("the receipt names output this node did not stream");
    }
    this.served.delete(req.jobId);
    return this.signed(req);
  }

  private async signed(req: ReceiptRequest): Promise<ReceiptFrame> {
    const signature = await this.account.signTypedData(workReceiptTypedData(receiptFromWire(req.receipt), req.domain));
    return { type: "receipt", receipt: req.receipt, signature };
  }
}
