/**
 * A paid job's credits: the worst case (prompt bound + generation limit) held before it runs
 * (HTTP 402 when it does not fit), then the actual usage charged, never above the hold, with
 * the serving nodes' receipt proposals in the same transaction (docs/security/metering.md). A
 * charge that fails releases the hold instead: no path leaves it held.
 */
import type { ReceiptRequest, Usage } from "@sharedllm/protocol";
import { jobCost, type Metering, type Price } from "../ledger/metering.js";
import type { Receipts } from "../ledger/receipts.js";
import type { Payees } from "../units.js";
import type { JobCredits } from "./job.js";

export class CreditHold implements JobCredits {
  private readonly amount: bigint;

  constructor(
    private readonly ledger: { metering: Metering; receipts: Receipts },
    private readonly payer: `0x${string}`,
    private readonly jobId: string,
    private readonly price: Price,
    worst: { promptTokens: number; generationLimit: number },
  ) {
    this.amount = jobCost(price, worst.promptTokens, worst.generationLimit);
  }

  hold(): Promise<void> {
    return this.ledger.metering.reserve(this.payer, this.jobId, this.amount);
  }

  release(): Promise<void> {
    return this.ledger.metering.release(this.payer, this.jobId, this.amount);
  }

  async charge(usage: Usage, payees: Payees, modelSha256: string | undefined): Promise<void> {
    const { metering, receipts } = this.ledger;
    let requests: ReceiptRequest[];
    try {
      ({ recorded: requests } = await metering.charge(
        this.payer,
        this.jobId,
        this.amount,
        jobCost(this.price, usage.prompt_tokens, usage.completion_tokens),
        // a split model pays every member by the layers it served; a solo node gets it all
        async (tx, charged) =>
          modelSha256 && charged > 0n
            ? receipts.propose(tx, {
                jobId: this.jobId,
                modelSha256,
                promptTokens: usage.prompt_tokens,
                completionTokens: usage.completion_tokens,
                credits: charged,
                ...payees,
              })
            : [],
      ));
    } catch (err) {
      await this.release();
      throw err;
    }
    receipts.send(requests);
  }
}
