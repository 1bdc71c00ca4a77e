/**
 * CreditLedger and FederationRegistry on Hardhat's in-process EVM, deployed from the same
 * artifacts (contracts/src/artifacts.ts) and with the same deploy code the coordinator uses.
 * A gas report is printed at the end and written to test-artifacts/gas-report.txt.
 */
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";
import { earningsTree } from "@sharedllm/protocol";
import { type Address, decodeErrorResult, type Hex, type PublicClient, parseEventLogs, type TestClient, type WalletClient } from "viem";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { loadHardhat } from "../src/hardhat.js";
import {
  CreditLedger,
  deployContracts,
  executeArgs,
  FederationRegistry,
  governanceCall,
  MockStablecoin,
  ROLES,
  scheduleArgs,
  TimelockController,
} from "../src/index.js";
import { GasReport } from "./gasReport.js";

const WEI_PER_CREDIT = 1_000_000_000n; // 1 gwei per credit
const NOTICE = 3600n;
const STABLE_UNITS = 10n; // 10 micro-USD per credit
const CAP = 10_000n; // most spend one settlement may move
const DELAY = 600n; // governance timelock
const ZERO_ADDRESS = "0x0000000000000000000000000000000000000000";

const gas = new GasReport();
let pub: PublicClient;
let test: TestClient;
let admin: WalletClient, coordinator: WalletClient, user: WalletClient, nodeA: WalletClient, nodeB: WalletClient, stranger: WalletClient;
let ledger: Address, registry: Address, stable: Address, timelock: Address;
let snapshot: Hex;

const addr = (w: WalletClient) => (w.account as { address: Address }).address;

async function write(
  w: WalletClient,
  address: Address,
  abi: readonly unknown[],
  functionName: string,
  args: readonly unknown[] = [],
  value?: bigint,
) {
  const { request } = await pub.simulateContract({ address, abi, functionName, args, account: w.account, value } as never);
  const hash = await w.writeContract(request as never);
  const receipt = await pub.waitForTransactionReceipt({ hash });
  gas.add(functionName, receipt.gasUsed);
  return receipt;
}

const L = (w: WalletClient, fn: string, args: readonly unknown[] = [], value?: bigint) =>
  write(w, ledger, CreditLedger.abi, fn, args, value);
const R = (w: WalletClient, fn: string, args: readonly unknown[] = []) => write(w, registry, FederationRegistry.abi, fn, args);
const read = <T>(functionName: string, args: readonly unknown[] = []) =>
  pub.readContract({ address: ledger, abi: CreditLedger.abi, functionName, args } as never) as Promise<T>;

/** The custom error name a call reverts with (decoded from the revert data the chain returns). */
async function revertName(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
      const data = (e as { data?: unknown }).data;
      if (typeof data === "string" && data.startsWith("0x") && data.length >= 10) {
        return decodeErrorResult({ abi: [...CreditLedger.abi, ...FederationRegistry.abi, ...TimelockController.abi], data: data as Hex })
          .errorName;
      }
    }
    throw err;
  }
  throw new Error("call did not revert");
}

beforeAll(async () => {
  const hre = loadHardhat();
  pub = (await hre.viem.getPublicClient()) as unknown as PublicClient;
  test = (await hre.viem.getTestClient()) as unknown as TestClient;
  [admin, coordinator, user, nodeA, nodeB, stranger] = (await hre.viem.getWalletClients()) as unknown as [
    WalletClient,
    WalletClient,
    WalletClient,
    WalletClient,
    WalletClient,
    WalletClient,
  ];
  const d = await deployContracts({
    publicClient: pub,
    wallet: admin as never,
    weiPerCredit: WEI_PER_CREDIT,
    withdrawalNoticeSeconds: NOTICE,
    coordinators: [addr(coordinator)],
    mockStablecoin: { unitsPerCredit: STABLE_UNITS },
    maxBatchSpend: CAP,
    timelockDelaySeconds: DELAY,
  });
  timelock = d.contracts.Governance;
  ledger = d.contracts.CreditLedger;
  registry = d.contracts.FederationRegistry;
  stable = d.contracts.MockStablecoin as Address;
  snapshot = await test.snapshot();
});

beforeEach(async () => {
  await test.revert({ id: snapshot });
  snapshot = await test.snapshot();
});

afterAll(() => {
  process.stdout.write(`\nGas report (CreditLedger, FederationRegistry)\n${gas.table()}\n`);
  gas.write(`${process.cwd()}/test-artifacts/gas-report.txt`);
});

/** A governance change through the timelock: the operator schedules it, the delay passes, it is executed. */
async function govern(functionName: string, args: readonly unknown[]) {
  const call = governanceCall(ledger, CreditLedger.abi, functionName, args, `${functionName}:${args.join(",")}`);
  await write(admin, timelock, TimelockController.abi, "schedule", scheduleArgs(call, DELAY));
  await test.increaseTime({ seconds: Number(DELAY) });
  await test.mine({ blocks: 1 });
  await write(admin, timelock, TimelockController.abi, "execute", executeArgs(call));
}

type EscrowTuple = readonly [bigint, bigint, bigint, bigint];
const escrow = async (u: WalletClient) => {
  const [deposited, spent, pendingWithdrawal, unlockAt] = await read<EscrowTuple>("escrows", [addr(u), addr(coordinator)]);
  return { deposited, spent, pendingWithdrawal, unlockAt };
};
const settlement = async () => {
  const [lastBatch, earningsRoot, totalSpent, totalEarnings, totalClaimed] = await read<readonly [bigint, Hex, bigint, bigint, bigint]>(
    "settlements",
    [addr(coordinator)],
  );
  return { lastBatch, earningsRoot, totalSpent, totalEarnings, totalClaimed };
};

describe("buying and escrow", () => {
  it("buys credits with the native coin at the governed price, straight into escrow", async () => {
    await L(user, "buy", [addr(coordinator)], 5_000n * WEI_PER_CREDIT);
    expect((await escrow(user)).deposited).toBe(5_000n);
    expect(await read("available", [addr(user), addr(coordinator)])).toBe(5_000n);
    expect(await pub.getBalance({ address: ledger })).toBe(5_000n * WEI_PER_CREDIT);
    // a payment that is not a whole number of credits is refused rather than rounded away
    expect(await revertName(L(user, "buy", [addr(coordinator)], WEI_PER_CREDIT + 1n))).toBe("InexactPayment");
    // governance changes the price (through the timelock); nobody else can
    await govern("setPrice", [2n * WEI_PER_CREDIT]);
    await L(user, "buy", ["0x0000000000000000000000000000000000000000"], 10n * WEI_PER_CREDIT);
    expect(await read("credits", [addr(user)])).toBe(5n);
    expect(await revertName(L(user, "setPrice", [1n]))).toBe("AccessControlUnauthorizedAccount");
  });

  it("buys credits with the stablecoin and deposits free credits", async () => {
    await write(user, stable, MockStablecoin.abi, "mint", [addr(user), 1_000n]);
    await write(user, stable, MockStablecoin.abi, "approve", [ledger, 1_000n]);
    await L(user, "buyWithToken", [100n, "0x0000000000000000000000000000000000000000"]);
    expect(await read("credits", [addr(user)])).toBe(100n);
    expect(await pub.readContract({ address: stable, abi: MockStablecoin.abi, functionName: "balanceOf", args: [ledger] })).toBe(1_000n);
    await L(user, "deposit", [addr(coordinator), 60n]);
    expect(await read("credits", [addr(user)])).toBe(40n);
    expect((await escrow(user)).deposited).toBe(60n);
    expect(await revertName(L(user, "deposit", [addr(coordinator), 41n]))).toBe("InsufficientCredits");
  });

  it("withdraws unspent escrow only after the notice period, and never what was spent", async () => {
    await L(user, "buy", [addr(coordinator)], 1_000n * WEI_PER_CREDIT);
    await L(user, "requestWithdrawal", [addr(coordinator), 800n]);
    expect(await read("available", [addr(user), addr(coordinator)])).toBe(200n);
    expect(await revertName(L(user, "withdraw", [addr(coordinator)]))).toBe("NoticeNotOver");
    // meanwhile the coordinator settles 300 of spend made before the request
    await L(coordinator, "settle", [1n, [addr(user)], [300n], `0x${"0".repeat(64)}`, 0n]);
    await test.increaseTime({ seconds: Number(NOTICE) });
    await test.mine({ blocks: 1 });
    await L(user, "withdraw", [addr(coordinator)]);
    // 800 were announced but only 700 were unspent
    expect(await read("credits", [addr(user)])).toBe(700n);
    expect(await escrow(user)).toMatchObject({ deposited: 300n, spent: 300n, pendingWithdrawal: 0n });
    expect(await revertName(L(user, "withdraw", [addr(coordinator)]))).toBe("NoWithdrawalPending");
  });
});

describe("settlement and claims", () => {
  async function fund(u: WalletClient, amount: bigint) {
    await L(u, "buy", [addr(coordinator)], amount * WEI_PER_CREDIT);
  }

  it("settles spend against escrow and pays each node its cumulative earnings once", async () => {
    await fund(user, 1_000n);
    await fund(stranger, 500n);
    // batch 1: user spent 300, stranger 100; node A earned 250, node B 150
    const t1 = earningsTree(
      new Map([
        [addr(nodeA), 250n],
        [addr(nodeB), 150n],
      ]),
    );
    await L(coordinator, "settle", [1n, [addr(user), addr(stranger)], [300n, 100n], t1.root, 400n]);
    expect(await settlement()).toMatchObject({ lastBatch: 1n, totalSpent: 400n, totalEarnings: 400n, earningsRoot: t1.root });

    await L(nodeA, "claim", [addr(coordinator), addr(nodeA), 250n, t1.proof(addr(nodeA))]);
    expect(await read("credits", [addr(nodeA)])).toBe(250n);
    // the same claim again pays nothing
    expect(await revertName(L(nodeA, "claim", [addr(coordinator), addr(nodeA), 250n, t1.proof(addr(nodeA))]))).toBe("NothingToClaim");

    // batch 2: cumulative values grow; A claims only the difference, B (who missed batch 1) everything
    const t2 = earningsTree(
      new Map([
        [addr(nodeA), 400n],
        [addr(nodeB), 200n],
      ]),
    );
    await L(coordinator, "settle", [2n, [addr(user)], [500n], t2.root, 600n]);
    await L(nodeA, "claim", [addr(coordinator), addr(nodeA), 400n, t2.proof(addr(nodeA))]);
    // anyone may send a node's claim; the credits go to the node
    await L(stranger, "claim", [addr(coordinator), addr(nodeB), 200n, t2.proof(addr(nodeB))]);
    expect(await read("credits", [addr(nodeA)])).toBe(400n);
    expect(await read("credits", [addr(nodeB)])).toBe(200n);
    expect(await read("credits", [addr(stranger)])).toBe(0n);

    // invariants: spend never above escrow, total paid equals total settled
    const s = await settlement();
    expect(s.totalClaimed).toBe(s.totalEarnings);
    expect(s.totalSpent).toBe((await escrow(user)).spent + (await escrow(stranger)).spent);
    for (const u of [user, stranger]) {
      const e = await escrow(u);
      expect(e.spent <= e.deposited).toBe(true);
    }
    // earned credits can be deposited to pay for the node's own API use
    await L(nodeA, "deposit", [addr(coordinator), 400n]);
    expect(await read("available", [addr(nodeA), addr(coordinator)])).toBe(400n);
  });

  it("settles a peer coordinator's escrow only up to what that coordinator accepted owing (federation clearing)", async () => {
    // `stranger` is another site's coordinator: it buys credits in escrow here to pay for the jobs
    // it forwards to this site (`coordinator`), and accepts what it owes from this site's receipts
    await L(admin, "grantRole", [ROLES.coordinator, addr(stranger)]);
    await fund(stranger, 1_000n);
    const zero = `0x${"0".repeat(64)}`;
    const spentByPeer = async () => (await read<EscrowTuple>("escrows", [addr(stranger), addr(coordinator)]))[1];
    // nothing accepted yet: this site's claim of 300 is clamped to 0 and recorded as shortfall
    await L(coordinator, "settle", [1n, [addr(stranger)], [300n], zero, 0n]);
    expect(await spentByPeer()).toBe(0n);
    expect(await read("shortfall", [addr(stranger), addr(coordinator)])).toBe(300n);
    // the peer accepts 250 (the receipts it checked); this site's 300 settles as 250
    await L(stranger, "accept", [[addr(coordinator)], [250n]]);
    expect(await read("accepted", [addr(stranger), addr(coordinator)])).toBe(250n);
    await L(coordinator, "settle", [2n, [addr(stranger)], [300n], zero, 0n]);
    expect(await spentByPeer()).toBe(250n);
    expect(await read("shortfall", [addr(stranger), addr(coordinator)])).toBe(50n);
    // what was accepted never decreases, and only coordinators accept
    expect(await revertName(L(stranger, "accept", [[addr(coordinator)], [100n]]))).toBe("AcceptedDecreased");
    expect(await revertName(L(user, "accept", [[addr(coordinator)], [1_000n]]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(stranger, "accept", [[addr(coordinator)], [1n, 2n]]))).toBe("LengthMismatch");
    // an ordinary user's escrow is not bounded by acceptances
    await fund(user, 100n);
    await L(coordinator, "settle", [3n, [addr(user)], [60n], zero, 0n]);
    expect((await escrow(user)).spent).toBe(60n);
  });

  it("refuses decreasing spend, earnings above spend and batches out of order", async () => {
    await fund(user, 100n);
    const zero = `0x${"0".repeat(64)}`;
    // spend above escrow is clamped (see the withdrawal test), so earnings above what it covers are refused
    expect(await revertName(L(coordinator, "settle", [1n, [addr(user)], [101n], zero, 101n]))).toBe("EarningsAboveSpend");
    expect(await revertName(L(coordinator, "settle", [1n, [addr(user)], [50n], zero, 51n]))).toBe("EarningsAboveSpend");
    expect(await revertName(L(coordinator, "settle", [2n, [addr(user)], [50n], zero, 0n]))).toBe("BatchOutOfOrder");
    await L(coordinator, "settle", [1n, [addr(user)], [50n], zero, 50n]);
    // posting batch 1 again (a crashed coordinator retrying) is refused, not paid twice
    expect(await revertName(L(coordinator, "settle", [1n, [addr(user)], [50n], zero, 50n]))).toBe("BatchOutOfOrder");
    expect(await revertName(L(coordinator, "settle", [2n, [addr(user)], [40n], zero, 50n]))).toBe("SpendDecreased");
    expect(await revertName(L(coordinator, "settle", [2n, [], [], zero, 49n]))).toBe("EarningsDecreased");
    expect(await revertName(L(coordinator, "settle", [2n, [addr(user)], [], zero, 50n]))).toBe("LengthMismatch");
  });

  it("refuses forged proofs and amounts not in the root", async () => {
    await fund(user, 1_000n);
    const tree = earningsTree(
      new Map([
        [addr(nodeA), 300n],
        [addr(nodeB), 100n],
      ]),
    );
    await L(coordinator, "settle", [1n, [addr(user)], [400n], tree.root, 400n]);
    // B's proof for A's leaf, an inflated amount, a stranger claiming with A's proof
    expect(await revertName(L(nodeA, "claim", [addr(coordinator), addr(nodeA), 300n, tree.proof(addr(nodeB))]))).toBe("InvalidProof");
    expect(await revertName(L(nodeA, "claim", [addr(coordinator), addr(nodeA), 301n, tree.proof(addr(nodeA))]))).toBe("InvalidProof");
    expect(await revertName(L(stranger, "claim", [addr(coordinator), addr(stranger), 300n, tree.proof(addr(nodeA))]))).toBe("InvalidProof");
    // a root from a different tree (e.g. another coordinator's) does not verify here
    const other = StandardMerkleTree.of([[addr(nodeA), "999"]], ["address", "uint256"]);
    expect(await revertName(L(nodeA, "claim", [addr(coordinator), addr(nodeA), 999n, other.getProof(0)]))).toBe("InvalidProof");
    expect(await read("credits", [addr(nodeA)])).toBe(0n);
  });

  it("lets only the coordinator role settle", async () => {
    await fund(user, 100n);
    const zero = `0x${"0".repeat(64)}`;
    expect(await revertName(L(stranger, "settle", [1n, [addr(user)], [10n], zero, 0n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(user, "settle", [1n, [addr(user)], [10n], zero, 0n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(stranger, "grantRole", [await read("COORDINATOR_ROLE"), addr(stranger)]))).toBe(
      "AccessControlUnauthorizedAccount",
    );
  });

  it("pause stops buying, settling and claiming until unpaused", async () => {
    await fund(user, 100n);
    const tree = earningsTree(new Map([[addr(nodeA), 10n]]));
    expect(await revertName(L(stranger, "pause"))).toBe("AccessControlUnauthorizedAccount");
    await L(admin, "pause");
    expect(await revertName(L(user, "buy", [addr(coordinator)], WEI_PER_CREDIT))).toBe("EnforcedPause");
    expect(await revertName(L(coordinator, "settle", [1n, [addr(user)], [10n], tree.root, 10n]))).toBe("EnforcedPause");
    await L(admin, "unpause");
    await L(coordinator, "settle", [1n, [addr(user)], [10n], tree.root, 10n]);
    await L(admin, "pause");
    expect(await revertName(L(nodeA, "claim", [addr(coordinator), addr(nodeA), 10n, tree.proof(addr(nodeA))]))).toBe("EnforcedPause");
    await L(admin, "unpause");
    await L(nodeA, "claim", [addr(coordinator), addr(nodeA), 10n, tree.proof(addr(nodeA))]);
    expect(await read("credits", [addr(nodeA)])).toBe(10n);
  });

  it("lets the treasurer (governance, through the timelock) sweep payments", async () => {
    await fund(user, 100n);
    const before = await pub.getBalance({ address: addr(stranger) });
    await govern("sweep", [addr(stranger), ZERO_ADDRESS, 100n * WEI_PER_CREDIT]);
    expect(await pub.getBalance({ address: addr(stranger) })).toBe(before + 100n * WEI_PER_CREDIT);
    expect(await revertName(L(stranger, "sweep", [addr(stranger), "0x0000000000000000000000000000000000000000", 1n]))).toBe(
      "AccessControlUnauthorizedAccount",
    );
  });
});

describe("attacks on settlement", () => {
  const zero = `0x${"0".repeat(64)}`;

  it("a user who withdraws before their spend is settled cannot stall the batch: spend is clamped, the shortfall recorded", async () => {
    await L(user, "buy", [addr(coordinator)], 100n * WEI_PER_CREDIT);
    await L(stranger, "buy", [addr(coordinator)], 100n * WEI_PER_CREDIT);
    // the user spent 80 (not yet settled), announces a withdrawal of everything and takes it after the notice
    await L(user, "requestWithdrawal", [addr(coordinator), 100n]);
    await test.increaseTime({ seconds: Number(NOTICE) });
    await test.mine({ blocks: 1 });
    await L(user, "withdraw", [addr(coordinator)]);
    expect(await read("credits", [addr(user)])).toBe(100n);
    // the batch still settles: the stranger's 30 in full, the user's 80 clamped to their (empty) escrow
    const tree = earningsTree(new Map([[addr(nodeA), 30n]]));
    const receipt = await L(coordinator, "settle", [1n, [addr(user), addr(stranger)], [80n, 30n], tree.root, 30n]);
    expect(receipt.status).toBe("success");
    expect(await settlement()).toMatchObject({ lastBatch: 1n, totalSpent: 30n, totalEarnings: 30n });
    expect(await read("shortfall", [addr(user), addr(coordinator)])).toBe(80n);
    const events = await pub.getContractEvents({ address: ledger, abi: CreditLedger.abi, eventName: "SpendShortfall" });
    expect(events.map((e) => [e.args.user?.toLowerCase(), e.args.posted, e.args.covered])).toEqual([[addr(user).toLowerCase(), 80n, 0n]]);
    await L(nodeA, "claim", [addr(coordinator), addr(nodeA), 30n, tree.proof(addr(nodeA))]);
    expect(await read("credits", [addr(nodeA)])).toBe(30n);
    // the user deposits again: the next batch posting their 80 is covered, and the shortfall is gone
    await L(user, "deposit", [addr(coordinator), 100n]);
    await L(coordinator, "settle", [2n, [addr(user)], [80n], tree.root, 30n]);
    expect(await read("shortfall", [addr(user), addr(coordinator)])).toBe(0n);
    expect((await escrow(user)).spent).toBe(80n);
  });

  it("escrow under a withdrawal whose notice is over cannot be settled, even before the user takes it", async () => {
    await L(user, "buy", [addr(coordinator)], 100n * WEI_PER_CREDIT);
    await L(user, "requestWithdrawal", [addr(coordinator), 60n]);
    // during the notice, spend made before the announcement can still be settled
    await L(coordinator, "settle", [1n, [addr(user)], [20n], zero, 0n]);
    await test.increaseTime({ seconds: Number(NOTICE) });
    await test.mine({ blocks: 1 });
    expect(await read("coverable", [addr(user), addr(coordinator)])).toBe(40n);
    // a coordinator (or a thief of its key) posting all 100 gets only the 40 not announced
    await L(coordinator, "settle", [2n, [addr(user)], [100n], zero, 0n]);
    expect((await escrow(user)).spent).toBe(40n);
    expect(await read("shortfall", [addr(user), addr(coordinator)])).toBe(60n);
    await L(user, "withdraw", [addr(coordinator)]);
    expect(await read("credits", [addr(user)])).toBe(60n);
  });

  it("a stolen coordinator key moves at most the governed cap per batch, and cannot sweep, reprice or grant", async () => {
    await L(user, "buy", [addr(coordinator)], 50_000n * WEI_PER_CREDIT);
    expect(await read("maxBatchSpend")).toBe(CAP);
    expect(await revertName(L(coordinator, "settle", [1n, [addr(user)], [CAP + 1n], zero, 0n]))).toBe("BatchSpendAboveCap");
    await L(coordinator, "settle", [1n, [addr(user)], [CAP], zero, 0n]);
    expect(await revertName(L(coordinator, "sweep", [addr(coordinator), ZERO_ADDRESS, 1n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(coordinator, "setPrice", [1n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(coordinator, "setMaxBatchSpend", [10n ** 30n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(coordinator, "grantRole", [ROLES.coordinator, addr(stranger)]))).toBe("AccessControlUnauthorizedAccount");
    // the operator cuts the key off at once (no timelock for revoking a coordinator)
    await L(admin, "revokeRole", [ROLES.coordinator, addr(coordinator)]);
    expect(await revertName(L(coordinator, "settle", [2n, [addr(user)], [CAP + 1n], zero, 0n]))).toBe("AccessControlUnauthorizedAccount");
    expect((await escrow(user)).spent).toBe(CAP);
  });

  it("governance changes only through the timelock: scheduled, delayed, then executed", async () => {
    // the operator key alone holds no governance role
    expect(await revertName(L(admin, "setMaxBatchSpend", [1n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(admin, "sweep", [addr(admin), ZERO_ADDRESS, 1n]))).toBe("AccessControlUnauthorizedAccount");
    expect(await revertName(L(admin, "grantRole", [ROLES.governor, addr(admin)]))).toBe("AccessControlUnauthorizedAccount");
    const call = governanceCall(ledger, CreditLedger.abi, "setMaxBatchSpend", [5n]);
    // only the proposer schedules; nothing executes before the delay
    expect(await revertName(write(coordinator, timelock, TimelockController.abi, "schedule", scheduleArgs(call, DELAY)))).toBe(
      "AccessControlUnauthorizedAccount",
    );
    expect(await revertName(write(admin, timelock, TimelockController.abi, "schedule", scheduleArgs(call, DELAY - 1n)))).toBe(
      "TimelockInsufficientDelay",
    );
    await write(admin, timelock, TimelockController.abi, "schedule", scheduleArgs(call, DELAY));
    expect(await revertName(write(admin, timelock, TimelockController.abi, "execute", executeArgs(call)))).toBe(
      "TimelockUnexpectedOperationState",
    );
    await test.increaseTime({ seconds: Number(DELAY) });
    await test.mine({ blocks: 1 });
    await write(admin, timelock, TimelockController.abi, "execute", executeArgs(call));
    expect(await read("maxBatchSpend")).toBe(5n);
  });
});

describe("FederationRegistry", () => {
  // public keys of hardhat's dev accounts are derived by viem from their private keys
  async function publicKeyOf(w: WalletClient): Promise<Hex> {
    const { recoverPublicKey, hashMessage } = await import("viem");
    const signature = await w.signMessage({ account: w.account as never, message: "key" });
    const key = await recoverPublicKey({ hash: hashMessage("key"), signature });
    return `0x${key.slice(4)}`; // drop the 0x04 prefix
  }

  it("registers coordinators with their own key, admits, endorses and revokes", async () => {
    const keyA = await publicKeyOf(coordinator);
    const keyB = await publicKeyOf(stranger);
    const now = BigInt((await pub.getBlock()).timestamp);
    const until = now + 86_400n;
    // a key that is not the sender's is refused, and so is one already expired
    expect(await revertName(R(coordinator, "register", [keyB, 1, until, "https://b.example", "{}"]))).toBe("KeyNotSender");
    expect(await revertName(R(coordinator, "register", [keyA, 1, now, "https://a.example", "{}"]))).toBe("KeyExpired");
    const registered = await R(coordinator, "register", [keyA, 1, until, "https://a.example", '{"site":"a"}']);
    const [event] = parseEventLogs({ abi: FederationRegistry.abi, logs: registered.logs, eventName: "Registered" });
    expect(event?.args).toMatchObject({ publicKey: keyA.toLowerCase(), keyId: 1, validUntil: until, url: "https://a.example" });
    await R(stranger, "register", [keyB, 7, until, "https://b.example", "{}"]);
    expect(await revertName(R(coordinator, "register", [keyA, 1, until, "https://a.example", "{}"]))).toBe("AlreadyRegistered");
    const trusted = (site: WalletClient, peer: WalletClient) =>
      pub.readContract({ address: registry, abi: FederationRegistry.abi, functionName: "isTrusted", args: [addr(site), addr(peer)] });
    expect(await trusted(coordinator, stranger)).toBe(false);
    // only admitted coordinators endorse; only governance admits
    expect(await revertName(R(coordinator, "endorse", [addr(stranger), true]))).toBe("NotAdmitted");
    expect(await revertName(R(stranger, "admit", [addr(coordinator)]))).toBe("AccessControlUnauthorizedAccount");
    await R(admin, "admit", [addr(coordinator)]);
    expect(await trusted(stranger, coordinator)).toBe(true);
    await R(coordinator, "endorse", [addr(stranger), true]);
    expect(await trusted(coordinator, stranger)).toBe(true);
    expect(await trusted(user, stranger)).toBe(false);
    await R(coordinator, "endorse", [addr(stranger), false]);
    expect(await trusted(coordinator, stranger)).toBe(false);
    await R(coordinator, "endorse", [addr(stranger), true]);
    // a renewal needs a greater key id and a future valid-until; only the key's owner renews
    expect(await revertName(R(stranger, "renewKey", [7, until + 10n]))).toBe("KeyIdNotIncreasing");
    expect(await revertName(R(user, "renewKey", [1, until]))).toBe("NotRegistered");
    const renewed = await R(stranger, "renewKey", [8, until + 100n]);
    expect(parseEventLogs({ abi: FederationRegistry.abi, logs: renewed.logs, eventName: "KeyRenewed" })[0]?.args).toMatchObject({
      keyId: 8,
      validUntil: until + 100n,
    });
    // an expired key is not trusted, admitted or endorsed; renewing it restores the trust
    await test.increaseTime({ seconds: 86_400 });
    await test.mine({ blocks: 1 });
    expect(await trusted(stranger, coordinator)).toBe(false);
    expect(await trusted(coordinator, stranger)).toBe(true);
    await R(coordinator, "renewKey", [2, until + 86_400n]);
    expect(await trusted(stranger, coordinator)).toBe(true);
    // revocation overrides an endorsement
    await R(admin, "revoke", [addr(stranger)]);
    expect(await trusted(coordinator, stranger)).toBe(false);
    const info = (await pub.readContract({
      address: registry,
      abi: FederationRegistry.abi,
      functionName: "getCoordinator",
      args: [addr(coordinator)],
    })) as { url: string; status: number; publicKey: Hex; keyId: number; validUntil: bigint };
    expect(info).toMatchObject({
      url: "https://a.example",
      status: 2,
      publicKey: keyA.toLowerCase(),
      keyId: 2,
      validUntil: until + 86_400n,
    });
    expect(await pub.readContract({ address: registry, abi: FederationRegistry.abi, functionName: "coordinators", args: [] })).toHaveLength(
      2,
    );
    // a coordinator revoked since may no longer endorse, but may still withdraw an endorsement
    const endorsed = () =>
      pub.readContract({
        address: registry,
        abi: FederationRegistry.abi,
        functionName: "endorsed",
        args: [addr(coordinator), addr(stranger)],
      });
    expect(await endorsed()).toBe(true);
    await R(admin, "revoke", [addr(coordinator)]);
    expect(await revertName(R(coordinator, "endorse", [addr(stranger), true]))).toBe("NotAdmitted");
    await R(coordinator, "endorse", [addr(stranger), false]);
    expect(await endorsed()).toBe(false);
  });
});

it("ships artifacts compiled from the current Solidity sources (npm run build -w @sharedllm/contracts)", async () => {
  const hre = loadHardhat();
  await hre.run("compile", { quiet: true });
  for (const [name, shipped] of Object.entries({ CreditLedger, FederationRegistry, MockStablecoin, TimelockController })) {
    expect((await hre.artifacts.readArtifact(name)).bytecode, name).toBe(shipped.bytecode);
  }
});
