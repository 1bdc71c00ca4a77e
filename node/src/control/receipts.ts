/** The node's side of work receipts lives in protocol/ (receiptSigner.ts): browser nodes sign with it too. */
export { ReceiptSigner, type ServedJob } from "@sharedllm/protocol";
