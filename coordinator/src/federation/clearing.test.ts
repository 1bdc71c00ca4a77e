import { type FederationReceipt, federationReceiptToWire, federationReceiptTypedData } from "@sharedllm/protocol";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { checkReceipt, priceOf, type Relayed, receiptTxid } from "./clearing.js";

const domain = { chainId: 31337, verifyingContract: "0x5fbdb2315678afecb367f032d93f642f64180aa3" } as const;
const server = privateKeyToAccount(generatePrivateKey());
const origin = privateKeyToAccount(generatePrivateKey()).address;
const job: Relayed = {
  origin,
  server: server.address,
  txid: "tx-1",
  completionTokens: 40,
  promptTokens: 12,
  pricePer1k: { prompt: 1000n, completion: 2000n },
};
const honest: FederationReceipt = {
  origin,
  server: server.address,
  txid: receiptTxid("tx-1"),
  model: `0x${"ab".repeat(32)}`,
  promptTokens: 12,
  completionTokens: 40,
  credits: priceOf(job.pricePer1k, 12, 40),
  issuedAt: 1_800_000_000n,
};

async function signed(r: FederationReceipt, by = server) {
  return { receipt: federationReceiptToWire(r), signature: await by.signTypedData(federationReceiptTypedData(r, domain)) };
}

describe("a peer's federation receipt", () => {
  it("holds when the serving site signed what was relayed at its advertised price", async () => {
    expect(await checkReceipt(await signed(honest), job, domain)).toEqual({ accepted: true, credits: 92n });
  });

  it.each<[string, Partial<FederationReceipt>, RegExp]>([
    ["more completion tokens than were relayed", { completionTokens: 42, credits: 96n }, /completion tokens/],
    ["more prompt tokens than the peer reported", { promptTokens: 13 }, /prompt tokens/],
    ["more credits than the advertised price gives", { credits: 93n }, /at most 92/],
    ["another origin", { origin: server.address }, /another origin/],
    ["another transaction", { txid: receiptTxid("tx-2") }, /another transaction/],
  ])("does not hold when it claims %s", async (_, change, reason) => {
    const v = await checkReceipt(await signed({ ...honest, ...change }), job, domain);
    expect(v).toMatchObject({ accepted: false, reason: expect.stringMatching(reason) });
  });

  it("does not hold when someone else signed it, in another domain, or when there is none", async () => {
    const forger = privateKeyToAccount(generatePrivateKey());
    expect(await checkReceipt(await signed(honest, forger), job, domain)).toMatchObject({ accepted: false });
    const elsewhere = { chainId: 1, verifyingContract: domain.verifyingContract } as const;
    expect(await checkReceipt(await signed(honest), job, elsewhere)).toMatchObject({ accepted: false });
    expect(await checkReceipt({}, job, domain)).toMatchObject({ accepted: false, reason: expect.stringMatching(/no receipt/) });
  });

  it("of a job the origin cancelled holds for the tokens the origin charged for, not one more, and no more prompt", async () => {
    const cancelled: Relayed = { ...job, completionTokens: 10, promptTokens: 0, cancelled: true };
    const part = { ...honest, promptTokens: 0, completionTokens: 10, credits: priceOf(job.pricePer1k, 0, 10) };
    expect(await checkReceipt(await signed(part), cancelled, domain)).toEqual({ accepted: true, credits: 20n });
    const oneMore = { ...part, completionTokens: 11, credits: priceOf(job.pricePer1k, 0, 11) };
    expect(await checkReceipt(await signed(oneMore), cancelled, domain)).toMatchObject({ accepted: false });
    expect(await checkReceipt(await signed({ ...part, promptTokens: 5 }), cancelled, domain)).toMatchObject({ accepted: false });
  });
});
