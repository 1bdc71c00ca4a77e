import { StandardMerkleTree } from "@openzeppelin/merkle-tree";
import { type Address, type Hex, recoverTypedDataAddress } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import {
  earningsTree,
  outputHash,
  promptHash,
  receiptFromWire,
  receiptJobId,
  receiptToWire,
  sharesByLayers,
  splitCredits,
  type WorkReceipt,
  workReceiptTypedData,
  workReceiptWireSchema,
} from "./ledger.js";

const addr = (n: number) => `0x${n.toString(16).padStart(40, "0")}` as Address;

describe("sharesByLayers", () => {
  it("pays each member its part of the layers, in whole basis points adding up to 10000", () => {
    expect(sharesByLayers([30])).toEqual([10_000]);
    expect(sharesByLayers([20, 10])).toEqual([6_667, 3_333]);
    expect(sharesByLayers([10, 10, 10])).toEqual([3_334, 3_333, 3_333]);
    expect(sharesByLayers([1, 29]).reduce((a, b) => a + b, 0)).toBe(10_000);
  });
});

describe("splitCredits", () => {
  it("splits by basis points and never loses or invents a unit", () => {
    expect(splitCredits(100n, [10_000])).toEqual([100n]);
    expect(splitCredits(100n, [5_000, 3_000, 2_000])).toEqual([50n, 30n, 20n]);
    const parts = splitCredits(7n, [3_333, 3_333, 3_334]);
    expect(parts.reduce((a, b) => a + b, 0n)).toBe(7n);
    expect(parts).toEqual([3n, 2n, 2n]);
  });

  it("never pays out more than the charge, whatever shares it is given", () => {
    const sum = (xs: bigint[]) => xs.reduce((a, b) => a + b, 0n);
    // the sock-puppet attack: two members at 10000 each
    expect(splitCredits(7n, [10_000, 10_000])).toEqual([4n, 3n]);
    for (const shares of [[10_000, 10_000, 10_000], [1, 1], [9_999, 10_000], [60_000], [0, 5_000]]) {
      for (const credits of [0n, 1n, 7n, 10n ** 18n + 3n]) expect(sum(splitCredits(credits, shares))).toBe(credits);
    }
    expect(splitCredits(7n, [0, 0])).toEqual([0n, 0n]);
    expect(() => splitCredits(7n, [-10_000, 20_000])).toThrow(RangeError);
    expect(() => splitCredits(7n, [0.5, 9_999.5])).toThrow(RangeError);
  });
});

describe("earningsTree", () => {
  it("gives proofs that verify against the root for every node, with the leaf encoding the contract checks", () => {
    const earnings = new Map<Address, bigint>([
      [addr(1), 10n],
      [addr(2), 25n],
      [addr(3), 7n],
    ]);
    const tree = earningsTree(earnings);
    for (const [node, amount] of earnings) {
      const proof = tree.proof(node) as `0x${string}`[];
      expect(StandardMerkleTree.verify(tree.root, ["address", "uint256"], [node, amount.toString()], proof)).toBe(true);
      expect(StandardMerkleTree.verify(tree.root, ["address", "uint256"], [node, (amount + 1n).toString()], proof)).toBe(false);
    }
    expect(tree.proof(addr(9))).toBeUndefined();
    // a node with nothing earned is left out; an empty tree has the zero root
    expect(earningsTree(new Map([[addr(1), 0n]])).root).toBe(`0x${"0".repeat(64)}`);
  });
});

describe("work receipts", () => {
  it("survive the wire and recover to the signing node", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    const receipt: WorkReceipt = {
      jobId: receiptJobId("job_1"),
      node: account.address,
      coordinator: addr(7),
      model: `0x${"ab".repeat(32)}`,
      promptTokens: 12,
      completionTokens: 34,
      shareBps: 10_000,
      credits: 80n,
      issuedAt: 1_800_000_000n,
    };
    const wire = workReceiptWireSchema.parse(JSON.parse(JSON.stringify(receiptToWire(receipt))));
    expect(receiptFromWire(wire)).toEqual(receipt);
    const domain = { chainId: 31337, verifyingContract: addr(8) };
    const signer = (r: WorkReceipt, signature: Hex) => recoverTypedDataAddress({ ...workReceiptTypedData(r, domain), signature });
    // version 1 (no commitments): still verifiable, so receipts proposed before version 2 settle
    const v1 = await account.signTypedData(workReceiptTypedData(receipt, domain));
    expect(await signer(receipt, v1)).toBe(account.address);
    expect(await signer({ ...receipt, completionTokens: 35 }, v1)).not.toBe(account.address);
    // version 2 commits to the prompt and the output: another output is another receipt
    const committed = {
      ...receipt,
      promptHash: promptHash({ messages: [{ role: "user", content: "hi" }] }),
      outputHash: outputHash([1, 2, 3]),
    };
    expect(receiptFromWire(workReceiptWireSchema.parse(JSON.parse(JSON.stringify(receiptToWire(committed)))))).toEqual(committed);
    const v2 = await account.signTypedData(workReceiptTypedData(committed, domain));
    expect(await signer(committed, v2)).toBe(account.address);
    expect(await signer({ ...committed, outputHash: outputHash([1, 2, 4]) }, v2)).not.toBe(account.address);
    expect(await signer(receipt, v2)).not.toBe(account.address);
    expect(await signer(committed, v1)).not.toBe(account.address);
    expect(workReceiptWireSchema.safeParse({ ...wire, credits: "-1" }).success).toBe(false);
    expect(workReceiptWireSchema.safeParse({ ...wire, shareBps: 10_001 }).success).toBe(false);
  });
});
