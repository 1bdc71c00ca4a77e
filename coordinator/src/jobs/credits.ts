/**
 * A paid job's credits: the worst case (prompt bound + generation limit) held before it runs
 * (HTTP 402 when it does not fit), then the actual usage charged, never above the hold, with
 * the serving nodes' receipt proposals in the same transaction (docs/security/metering.md). A
 * charge that fails releases the hold instead: no path leaves it held.
 *
 * A job continued on other units (docs/continuation.md) is charged once, for its prompt and its
 * output; the charge is divided among the units in proportion to the list price of the work
 * each did, a continuing unit's re-prefill of the output so far included.
 */
import { type JobKind, outputHash, type ReceiptRequest, receiptJobId, splitCredits, type Usage } from "@sharedllm/protocol";
import type { Audits } from "../audits/audits.js";
import { jobCost, type Metering, type Price } from "../ledger/metering.js";
import type { Receipts } from "../ledger/receipts.js";
import type { JobCredits, PaidPart } from "./job.js";

export class CreditHold implements JobCredits {
  private readonly amount: bigint;

  constructor(
    private readonly ledger: { metering: Metering; receipts: Receipts; audits?: Audits },
    private readonly payer: `0x${string}`,
    /** the job: its receipts commit to its promptHash; its audits rerun its request */
    private readonly job: { id: string; kind: JobKind; model: string; request: Record<string, unknown>; promptHash: `0x${string}` },
    private readonly price: Price,
    worst: { promptTokens: number; generationLimit: number },
  ) {
    this.amount = jobCost(price, worst.promptTokens, worst.generationLimit);
  }

  hold(): Promise<void> {
    return this.ledger.metering.reserve(this.payer, this.job.id, this.amount);
  }

  release(): Promise<void> {
    return this.ledger.metering.release(this.payer, this.job.id, this.amount);
  }

  async charge(usage: Usage, parts: readonly PaidPart[]): Promise<void> {
    const { metering, receipts } = this.ledger;
    let requests: ReceiptRequest[];
    try {
      ({ recorded: requests } = await metering.charge(
        this.payer,
        this.job.id,
        this.amount,
        jobCost(this.price, usage.prompt_tokens, usage.completion_tokens),
        async (tx, charged) => {
          const credits = divide(
            charged,
            parts.map((p) => jobCost(this.price, p.promptTokens, p.completionTokens)),
          );
          // a split model pays every member by the layers it served; a solo node gets it all. One
          // receipt per job and node: a node in several parts (a worker of a split that re-formed
          // mid-job) has its credits and tokens added up.
          const owed = new Map<
            string,
            { node: `0x${string}`; shareBps: number; part: PaidPart; credits: bigint; completionTokens: number; output: number[] }
          >();
          for (const [i, part] of parts.entries()) {
            if (!part.modelSha256) continue;
            const split = splitCredits(
              credits[i] ?? 0n,
              part.payees.members.map((m) => m.shareBps),
            );
            for (const [j, m] of part.payees.members.entries()) {
              const o = owed.get(m.node.toLowerCase());
              if (o) {
                o.credits += split[j] ?? 0n;
                o.completionTokens += part.completionTokens;
                o.output.push(...part.output.slice(part.from));
              } else {
                const output = part.output.slice(part.from);
                const first = { ...m, part, credits: split[j] ?? 0n, completionTokens: part.completionTokens, output };
                owed.set(m.node.toLowerCase(), first);
              }
            }
          }
          // parts forwarded to a peer site: the coordinator earns them (it pays the peer); no receipt,
          // since no node of this site served them
          const forwarded = parts.reduce((sum, p, i) => (p.payees.coordinator ? sum + (credits[i] ?? 0n) : sum), 0n);
          if (forwarded > 0n) {
            await tx
              .insertInto("ledger_entries")
              .values({ address: receipts.coordinator.toLowerCase(), kind: "earn", amount: forwarded, job_id: receiptJobId(this.job.id) })
              .execute();
          }
          const proposed: ReceiptRequest[] = [];
          for (const o of owed.values()) {
            if (o.credits <= 0n) continue;
            proposed.push(
              ...(await receipts.propose(tx, {
                jobId: this.job.id,
                modelSha256: o.part.modelSha256 as string,
                promptTokens: o.part.receiptPromptTokens,
                completionTokens: o.completionTokens,
                credits: o.credits,
                members: [{ node: o.node, shareBps: o.shareBps }],
                ...(o.part.payees.via && { via: o.part.payees.via }),
                commits: { promptHash: this.job.promptHash, outputHash: outputHash(o.output) },
              })),
            );
          }
          // a solo node's part may be audited; it is not told (docs/verification.md). Not a continued
          // job's: its later parts ran on output batched in again, with other rounding
          for (const part of parts.length === 1 ? parts : []) {
            const [solo, ...others] = part.payees.members;
            const audits = this.ledger.audits;
            if (!audits || !solo || others.length || part.payees.via || !part.modelSha256 || !part.completionTokens) continue;
            await audits.consider(tx, {
              jobId: this.job.id,
              node: solo.node,
              model: this.job.model,
              modelSha256: part.modelSha256,
              kind: this.job.kind,
              request: this.job.request,
              output: part.output,
              from: part.from,
              promptTokens: part.receiptPromptTokens,
              promptHash: this.job.promptHash,
              outputHash: outputHash(part.output.slice(part.from)),
            });
          }
          return proposed;
        },
      ));
    } catch (err) {
      await this.release();
      throw err;
    }
    receipts.send(requests);
    this.ledger.audits?.pump();
  }
}

/** `credits` divided in proportion to `weights` (bigints); the rounding remainder goes to the first. */
function divide(credits: bigint, weights: readonly bigint[]): bigint[] {
  const total = weights.reduce((a, b) => a + b, 0n);
  if (total === 0n) return weights.map((_, i) => (i === 0 ? credits : 0n));
  const parts = weights.map((w) => (credits * w) / total);
  parts[0] = (parts[0] ?? 0n) + credits - parts.reduce((a, b) => a + b, 0n);
  return parts;
}
