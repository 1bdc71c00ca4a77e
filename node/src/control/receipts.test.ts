import {
  outputHash,
  promptHash,
  type ReceiptRequest,
  receiptFromWire,
  receiptJobId,
  receiptToWire,
  workReceiptTypedData,
} from "@sharedllm/protocol";
import { type Hex, recoverTypedDataAddress } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { ReceiptSigner } from "./receipts.js";

const account = privateKeyToAccount(generatePrivateKey());
const domain = { chainId: 31337, verifyingContract: `0x${"11".repeat(20)}` as const };
const request = { messages: [{ role: "user", content: "hi" }], temperature: 0 };
const served = { modelSha256: "ab".repeat(32), promptHash: promptHash(request), output: [5, 6, 7] };

function proposal(
  jobId: string,
  o: { completionTokens?: number; promptTokens?: number; output?: number[]; commits?: boolean } = {},
): ReceiptRequest {
  return {
    type: "receipt.request",
    jobId,
    domain,
    receipt: receiptToWire({
      jobId: receiptJobId(jobId),
      node: account.address,
      coordinator: `0x${"22".repeat(20)}`,
      model: `0x${served.modelSha256}`,
      promptTokens: o.promptTokens ?? 4,
      completionTokens: o.completionTokens ?? 3,
      shareBps: 10_000,
      credits: 9n,
      issuedAt: 1n,
      ...(o.commits !== false && { promptHash: promptHash(request), outputHash: outputHash(o.output ?? served.output) }),
    }),
  };
}

describe("ReceiptSigner", () => {
  it("signs a version 2 receipt committing to the prompt and the tokens it streamed, once", async () => {
    const signer = new ReceiptSigner(account);
    signer.record("job_a", served, { prompt_tokens: 4 });
    const req = proposal("job_a");
    const frame = await signer.sign(req);
    expect(frame.refused).toBeUndefined();
    const typed = workReceiptTypedData(receiptFromWire(req.receipt), domain);
    expect(await recoverTypedDataAddress({ ...typed, signature: frame.signature as Hex })).toBe(account.address);
    expect((await signer.sign(req)).refused).toMatch(/no record/);
  });

  it("refuses output it did not stream, another count, and a receipt without commitments", async () => {
    const signer = new ReceiptSigner(account);
    signer.record("job_b", served, { prompt_tokens: 4 });
    expect((await signer.sign(proposal("job_b", { output: [5, 6, 8] }))).refused).toMatch(/did not stream/);
    expect((await signer.sign(proposal("job_b", { completionTokens: 4 }))).refused).toMatch(/streamed 3/);
    expect((await signer.sign(proposal("job_b", { commits: false }))).refused).toMatch(/commits to no prompt/);
  });

  it("signs for one end token more than it streamed when its engine counted one", async () => {
    const signer = new ReceiptSigner(account);
    signer.record("job_d", served, { prompt_tokens: 4, completion_tokens: 9 });
    expect((await signer.sign(proposal("job_d", { completionTokens: 5 }))).refused).toMatch(/streamed 4/);
    expect((await signer.sign(proposal("job_d", { completionTokens: 4 }))).refused).toBeUndefined();
  });

  it("signs for a prefix of a part it streamed before the job went on elsewhere, never more", async () => {
    const signer = new ReceiptSigner(account);
    signer.recordPart("job_c", served);
    expect((await signer.sign(proposal("job_c", { completionTokens: 4, output: [5, 6, 7, 8] }))).refused).toMatch(/streamed 3/);
    expect((await signer.sign(proposal("job_c", { completionTokens: 2, output: [5, 6] }))).refused).toBeUndefined();
  });

  it("signs for less than it served (a client that left as the job ended is charged what it was sent), never for more prompt", async () => {
    const signer = new ReceiptSigner(account);
    signer.record("job_e", served, { prompt_tokens: 4, completion_tokens: 3 });
    expect((await signer.sign(proposal("job_e", { promptTokens: 5, completionTokens: 2, output: [5, 6] }))).refused).toMatch(/more than/);
    expect((await signer.sign(proposal("job_e", { promptTokens: 0, completionTokens: 2, output: [5, 7] }))).refused).toMatch(
      /did not stream/,
    );
    expect((await signer.sign(proposal("job_e", { promptTokens: 0, completionTokens: 2, output: [5, 6] }))).refused).toBeUndefined();
  });
});
