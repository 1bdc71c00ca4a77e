/**
 * Clearing between sites (docs/federation.md, Clearing). A serving site signs a federation receipt
 * (EIP-712, its coordinator key) for each forwarded job it charged the origin for; the origin
 * checks it here against what it relayed and the price the peer advertised when the job was sent,
 * keeps it, and adds the credits of every receipt that held to what it accepts owing the peer on
 * the ledger (CreditLedger.accept), which bounds what the peer may settle of the origin's escrow.
 * Pure, but for the signature's recovery.
 */
import {
  type FederationReceipt,
  type FederationReceiptWire,
  federationReceiptFromWire,
  federationReceiptTypedData,
} from "@sharedllm/protocol";
import { type Address, type Hex, keccak256, recoverTypedDataAddress, stringToBytes } from "viem";

/** The ledger's EIP-712 domain: receipts name the chain and the CreditLedger they settle on. */
export interface LedgerDomain {
  chainId: number;
  verifyingContract: Address;
}

/** What the origin knows of a job it forwarded, to check the peer's receipt against. */
export interface Relayed {
  origin: Address;
  server: Address;
  txid: string;
  /** tokens the peer streamed, as counted here */
  completionTokens: number;
  /** the prompt tokens the origin's job took as the prompt: the peer's report, within the origin's bound */
  promptTokens: number;
  /** the peer's advertised price per 1000 tokens when the job was sent */
  pricePer1k: { prompt: bigint; completion: bigint };
  /** the origin cancelled it: the tokens are what it charged its client for, with no end token beyond */
  cancelled?: boolean;
}

export type ReceiptVerdict = { accepted: true; credits: bigint } | { accepted: false; reason: string };

/** The transaction id as a receipt names it. */
export const receiptTxid = (txid: string): Hex => keccak256(stringToBytes(txid));

/** The most a receipt may charge for its tokens at the advertised price. */
export function priceOf(p: Relayed["pricePer1k"], promptTokens: number, completionTokens: number): bigint {
  return (p.prompt * BigInt(promptTokens) + p.completion * BigInt(completionTokens)) / 1000n;
}

export async function checkReceipt(
  got: { receipt?: FederationReceiptWire; signature?: Hex },
  job: Relayed,
  domain: LedgerDomain,
): Promise<ReceiptVerdict> {
  const refuse = (reason: string): ReceiptVerdict => ({ accepted: false, reason });
  if (!got.receipt || !got.signature) return refuse("the peer sent no receipt (or one that does not parse)");
  const r: FederationReceipt = federationReceiptFromWire(got.receipt);
  const signer = await recoverTypedDataAddress({ ...federationReceiptTypedData(r, domain), signature: got.signature }).catch(
    () => undefined,
  );
  if (signer?.toLowerCase() !== job.server.toLowerCase())
    return refuse(`the receipt is not signed by the peer (signer ${signer ?? "none"})`);
  if (r.server.toLowerCase() !== job.server.toLowerCase()) return refuse("the receipt names another serving site");
  if (r.origin.toLowerCase() !== job.origin.toLowerCase()) return refuse("the receipt names another origin");
  if (r.txid.toLowerCase() !== receiptTxid(job.txid)) return refuse("the receipt names another transaction");
  // one end token the engine counted in no event is believed, as for a node (docs/verification.md)
  if (r.completionTokens > job.completionTokens + (job.cancelled ? 0 : 1)) {
    return refuse(`the receipt claims ${r.completionTokens} completion tokens; ${job.completionTokens} were relayed`);
  }
  if (r.promptTokens > job.promptTokens)
    return refuse(`the receipt claims ${r.promptTokens} prompt tokens; the peer reported ${job.promptTokens}`);
  const most = priceOf(job.pricePer1k, r.promptTokens, r.completionTokens);
  if (r.credits > most) return refuse(`the receipt charges ${r.credits} credits; the advertised price gives at most ${most}`);
  return { accepted: true, credits: r.credits };
}
