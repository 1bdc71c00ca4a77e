/**
 * What the coordinator, the nodes and the CreditLedger contract agree on: the EIP-712 WorkReceipt
 * (docs/architecture.md, "Ledger"), the leaves of the earnings Merkle tree and the wire form of
 * receipts. Amounts are bigint credits (the ledger's smallest unit) everywhere; on JSON wires they
 * travel as decimal strings.
 */
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";
import { type Address, type Hex, keccak256, stringToBytes, type TypedDataDefinition } from "viem";
import { z } from "zod";

const RECEIPT_FIELDS_V1 = [
  { name: "jobId", type: "bytes32" },
  { name: "node", type: "address" },
  { name: "coordinator", type: "address" },
  { name: "model", type: "bytes32" },
  { name: "promptTokens", type: "uint32" },
  { name: "completionTokens", type: "uint32" },
  { name: "shareBps", type: "uint16" },
  { name: "credits", type: "uint256" },
  { name: "issuedAt", type: "uint64" },
] as const;

/** The first WorkReceipt (domain version 1): still verified, so receipts proposed before version 2 settle. */
export const WORK_RECEIPT_TYPES_V1 = { WorkReceipt: RECEIPT_FIELDS_V1 } as const;

/**
 * The WorkReceipt (domain version 2): it also commits to the prompt and to the output token ids
 * the node streamed (`promptHash`, `outputHash`), so an audit holds a node to the output it signed
 * for (docs/verification.md).
 */
export const WORK_RECEIPT_TYPES = {
  WorkReceipt: [...RECEIPT_FIELDS_V1, { name: "promptHash", type: "bytes32" }, { name: "outputHash", type: "bytes32" }],
} as const;

export interface WorkReceipt {
  jobId: Hex;
  node: Address;
  coordinator: Address;
  /** sha256 of the GGUF file */
  model: Hex;
  promptTokens: number;
  completionTokens: number;
  /** this node's share of the job in basis points (10000 for a solo node) */
  shareBps: number;
  credits: bigint;
  /** unix seconds */
  issuedAt: bigint;
  /** version 2: `promptHash` of the job's request, `outputHash` of the token ids this node streamed */
  promptHash?: Hex;
  outputHash?: Hex;
}

export function workReceiptDomain(chainId: number, ledger: Address, version: "1" | "2" = "2") {
  return { name: "SharedLLM", version, chainId, verifyingContract: ledger } as const;
}

/** What a node signs for a receipt and the coordinator verifies: version 2 when it carries both hashes, else version 1. */
export function workReceiptTypedData(r: WorkReceipt, domain: { chainId: number; verifyingContract: Address }): TypedDataDefinition {
  const { promptHash, outputHash, ...v1 } = r;
  if (promptHash !== undefined && outputHash !== undefined) {
    return {
      domain: workReceiptDomain(domain.chainId, domain.verifyingContract, "2"),
      types: WORK_RECEIPT_TYPES,
      primaryType: "WorkReceipt",
      message: { ...v1, promptHash, outputHash },
    };
  }
  return {
    domain: workReceiptDomain(domain.chainId, domain.verifyingContract, "1"),
    types: WORK_RECEIPT_TYPES_V1,
    primaryType: "WorkReceipt",
    message: v1,
  };
}

/**
 * The prompt a receipt commits to: keccak256 of the JSON of the request's `messages` (a chat) or
 * `prompt` (a completion), as the job's request carries them to every node that serves a part.
 */
export function promptHash(request: Record<string, unknown>): Hex {
  return keccak256(stringToBytes(JSON.stringify(request.messages ?? request.prompt ?? null)));
}

/** In `outputHash`, a token the node streamed without telling its id (docs/continuation.md). */
export const UNTOLD_TOKEN = 0xffffffff;

/** The output a receipt commits to: keccak256 of the token ids, each a big-endian uint32 (abi.encodePacked(uint32[])). */
export function outputHash(ids: readonly number[]): Hex {
  const bytes = new Uint8Array(ids.length * 4);
  const view = new DataView(bytes.buffer);
  for (const [i, id] of ids.entries()) view.setUint32(i * 4, id);
  return keccak256(bytes);
}

/** The bytes32 of a coordinator job id in receipts. */
export function receiptJobId(jobId: string): Hex {
  return keccak256(stringToBytes(jobId));
}

/** An EVM address (checksummed or not), typed as viem's Address. */
export const addressSchema = z.custom<Address>((v) => typeof v === "string" && /^0x[0-9a-fA-F]{40}$/.test(v), "must be an address");

/** `bytes` bytes as 0x-prefixed hex (receipts on the wire). */
export const hexBytesSchema = (bytes: number) => z.string().regex(new RegExp(`^0x[0-9a-fA-F]{${bytes * 2}}$`));
/** A uint256 as a decimal string (bigints on JSON wires). */
export const uintStringSchema = z.string().regex(/^\d{1,78}$/);

/** A receipt on the control channel (bigints as decimal strings). */
export const workReceiptWireSchema = z.object({
  jobId: hexBytesSchema(32),
  node: hexBytesSchema(20),
  coordinator: hexBytesSchema(20),
  model: hexBytesSchema(32),
  promptTokens: z.number().int().min(0).max(0xffffffff),
  completionTokens: z.number().int().min(0).max(0xffffffff),
  shareBps: z.number().int().min(0).max(10_000),
  credits: uintStringSchema,
  issuedAt: uintStringSchema,
  promptHash: hexBytesSchema(32).optional(),
  outputHash: hexBytesSchema(32).optional(),
});
export type WorkReceiptWire = z.infer<typeof workReceiptWireSchema>;

export function receiptToWire(r: WorkReceipt): WorkReceiptWire {
  const { promptHash, outputHash, ...rest } = r;
  return {
    ...rest,
    credits: r.credits.toString(),
    issuedAt: r.issuedAt.toString(),
    ...(promptHash !== undefined && outputHash !== undefined && { promptHash, outputHash }),
  };
}

export function receiptFromWire(w: WorkReceiptWire): WorkReceipt {
  const { promptHash: _p, outputHash: _o, ...v1 } = w;
  return {
    ...v1,
    jobId: w.jobId as Hex,
    node: w.node as Address,
    coordinator: w.coordinator as Address,
    model: w.model as Hex,
    credits: BigInt(w.credits),
    issuedAt: BigInt(w.issuedAt),
    ...(w.promptHash && w.outputHash && { promptHash: w.promptHash as Hex, outputHash: w.outputHash as Hex }),
  };
}

/**
 * A cluster's shares in basis points from the layers each member serves, in the order given: a
 * member is paid for its part of the model, rounding leftovers to the first, so the shares add up
 * to exactly 10000. Heads announce these and the coordinator checks them (docs/security/cluster.md).
 */
export function sharesByLayers(layerCounts: readonly number[]): number[] {
  const total = layerCounts.reduce((a, b) => a + b, 0);
  if (total <= 0) return layerCounts.map(() => 0);
  const shares = layerCounts.map((c) => Math.floor((c * 10_000) / total));
  shares[0] = (shares[0] ?? 0) + 10_000 - shares.reduce((a, b) => a + b, 0);
  return shares;
}

/**
 * Splits `credits` by basis points; rounding leftovers go to the first share so the parts sum
 * exactly. The shares are weights over their own total, so whatever a caller passes (shares that
 * add up to more or less than 10000, one member named twice) the parts never add up to more than
 * `credits`: a job never pays out more than it was charged. A negative or fractional share throws.
 */
export function splitCredits(credits: bigint, sharesBps: readonly number[]): bigint[] {
  if (credits < 0n) throw new RangeError(`cannot split a negative amount (${credits})`);
  for (const bps of sharesBps) {
    if (!Number.isSafeInteger(bps) || bps < 0) throw new RangeError(`a share must be a whole number of basis points, not ${bps}`);
  }
  const total = sharesBps.reduce((a, b) => a + BigInt(b), 0n);
  if (total === 0n) return sharesBps.map(() => 0n);
  const parts = sharesBps.map((bps) => (credits * BigInt(bps)) / total);
  const left = credits - parts.reduce((a, b) => a + b, 0n);
  parts[0] = (parts[0] ?? 0n) + left;
  return parts;
}

export interface EarningsTree {
  root: Hex;
  /** proof for a node's leaf, or undefined when the node is not in the tree */
  proof(node: Address): Hex[] | undefined;
}

const ZERO_ROOT: Hex = `0x${"0".repeat(64)}`;

/**
 * The Merkle tree over every node's cumulative earnings, leaves
 * keccak256(keccak256(abi.encode(address node, uint256 cumulative))) as CreditLedger.claim checks them.
 */
export function earningsTree(cumulative: ReadonlyMap<Address, bigint>): EarningsTree {
  const entries = [...cumulative].filter(([, amount]) => amount > 0n).map(([node, amount]) => [node.toLowerCase(), amount] as const);
  if (entries.length === 0) return { root: ZERO_ROOT, proof: () => undefined };
  const tree = StandardMerkleTree.of(
    entries.map(([node, amount]) => [node, amount.toString()]),
    ["address", "uint256"],
  );
  const index = new Map(entries.map(([node], i) => [node, i]));
  return {
    root: tree.root as Hex,
    proof(node) {
      const i = index.get(node.toLowerCase());
      return i === undefined ? undefined : (tree.getProof(i) as Hex[]);
    },
  };
}
