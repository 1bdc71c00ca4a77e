import type { Address } from "viem";
import { describe, expect, it } from "vitest";
import { coverable, type JournalEntry, type PlanInput, planBatch } from "./batchPlan.ts";

const U1 = "0x00000000000000000000000000000000000000a1" as Address;
const U2 = "0x00000000000000000000000000000000000000a2" as Address;
const N1 = "0x00000000000000000000000000000000000000b1" as Address;
const N2 = "0x00000000000000000000000000000000000000b2" as Address;

const escrow = (deposited: bigint, spent = 0n, pendingWithdrawal = 0n, unlockAt = 0n) => ({
  deposited,
  spent,
  pendingWithdrawal,
  unlockAt,
});
let nextId = 1;
const charge = (address: Address, amount: bigint, jobId: string): JournalEntry => ({
  id: String(nextId++),
  address,
  kind: "charge",
  amount,
  jobId,
});
const earn = (address: Address, amount: bigint, jobId: string): JournalEntry => ({
  id: String(nextId++),
  address,
  kind: "earn",
  amount,
  jobId,
});

function input(entries: JournalEntry[], over: Partial<PlanInput> = {}): PlanInput {
  return {
    entries,
    users: new Map([
      [U1, { posted: 0n, escrow: escrow(100n) }],
      [U2, { posted: 0n, escrow: escrow(100n) }],
    ]),
    jobs: new Map(),
    earnings: new Map(),
    chain: { totalSpent: 0n, maxBatchSpend: 1_000n, settleBy: 1_000n },
    maxUsers: 400,
    ...over,
  };
}

describe("planBatch", () => {
  it("takes honest charges and earnings as they are", () => {
    const entries = [charge(U1, 7n, "j1"), earn(N1, 4n, "j1"), earn(N2, 3n, "j1"), charge(U2, 5n, "j2"), earn(N1, 5n, "j2")];
    const plan = planBatch(input(entries));
    expect(new Set(plan.take)).toEqual(new Set(entries.map((e) => e.id)));
    expect(plan.setAside).toEqual([]);
    expect(plan.users).toEqual([U1, U2]);
    expect(plan.spends).toEqual([7n, 5n]);
    expect(plan.earnings).toEqual(
      new Map([
        [N1, 9n],
        [N2, 3n],
      ]),
    );
    expect(plan.totalEarnings).toBe(12n);
    expect(plan.batchSpent).toBe(12n);
  });

  it("sets aside earnings above a job's charge (sock puppets at 10000 bps each) and settles the rest", () => {
    const entries = [charge(U1, 7n, "j1"), earn(N1, 7n, "j1"), earn(N2, 7n, "j1"), charge(U2, 5n, "j2"), earn(N1, 5n, "j2")];
    const plan = planBatch(input(entries));
    expect(plan.setAside).toEqual([{ id: entries[2]?.id, reason: "earnings on job j1 would reach 14 credits, above its charge of 7" }]);
    expect(plan.totalEarnings).toBe(12n);
    expect(plan.totalEarnings <= plan.batchSpent).toBe(true);
  });

  it("counts earlier batches: a job's earnings across batches stay within its charge", () => {
    const late = earn(N2, 1n, "j1");
    const plan = planBatch(
      input([late], {
        jobs: new Map([["j1", { charged: 7n, earned: 7n, chargeSetAside: false }]]),
        chain: { totalSpent: 7n, maxBatchSpend: 1_000n, settleBy: 0n },
      }),
    );
    expect(plan.take).toEqual([]);
    expect(plan.setAside[0]?.reason).toContain("above its charge of 7");
  });

  it("sets aside earnings on a job that has no charge", () => {
    const plan = planBatch(input([earn(N1, 3n, "ghost")]));
    expect(plan.take).toEqual([]);
    expect(plan.setAside[0]?.reason).toBe("no charge is recorded for job ghost");
  });

  it("posts a charge the escrow no longer covers as a shortfall, sets aside what nodes earned on it; the rest settles", () => {
    const entries = [charge(U1, 80n, "j1"), earn(N1, 80n, "j1"), charge(U2, 30n, "j2"), earn(N1, 30n, "j2")];
    const users = new Map([
      // U1 spent 80, then withdrew everything before settlement
      [U1, { posted: 0n, escrow: escrow(0n) }],
      [U2, { posted: 0n, escrow: escrow(100n) }],
    ]);
    const plan = planBatch(input(entries, { users }));
    expect(plan.take).toEqual([entries[0]?.id, entries[2]?.id, entries[3]?.id]);
    expect(plan.setAside.map((a) => [a.id, a.taken ?? false])).toEqual([
      [entries[0]?.id, true],
      [entries[1]?.id, false],
    ]);
    expect(plan.setAside[0]?.reason).toContain("withdrew before it was settled");
    // U1's 80 is posted (the ledger clamps it to 0 and records the shortfall); only U2's 30 is spent
    expect(plan.users).toEqual([U1, U2]);
    expect(plan.spends).toEqual([80n, 30n]);
    expect(plan.batchSpent).toBe(30n);
    expect(plan.earnings).toEqual(new Map([[N1, 30n]]));
  });

  it("treats a withdrawal whose notice ends before the batch can be mined as taken", () => {
    const e = escrow(100n, 10n, 60n, 500n);
    expect(coverable(e, 499n)).toBe(100n);
    expect(coverable(e, 500n)).toBe(40n);
    const plan = planBatch(input([charge(U1, 50n, "j1")], { users: new Map([[U1, { posted: 10n, escrow: e }]]) }));
    expect(plan.spends).toEqual([60n]);
    expect(plan.batchSpent).toBe(30n);
    expect(plan.setAside[0]?.reason).toContain("covers 40 credits");
  });

  it("settles a peer coordinator's escrow only up to what it accepted: beyond it, recent charges wait and older ones are never posted", () => {
    // U1 is a peer site that accepted owing 30 of its 100 in escrow: the ledger settles no more
    const users = new Map([[U1, { posted: 0n, escrow: { ...escrow(100n), peerAccepted: 30n } }]]);
    const accepted = charge(U1, 30n, "j1");
    const young = { ...charge(U1, 20n, "j2"), recent: true };
    const entries = [accepted, earn(N1, 30n, "j1"), young, earn(N1, 20n, "j2")];
    const waiting = planBatch(input(entries, { users }));
    // the accepted job settles; the recent one waits for the peer's acceptance, earnings and all
    expect(waiting.take).toEqual([accepted.id, entries[1]?.id]);
    expect(waiting.setAside).toEqual([]);
    expect(waiting.spends).toEqual([30n]);
    expect(waiting.earnings).toEqual(new Map([[N1, 30n]]));
    // once accepted, it settles
    const caughtUp = planBatch(
      input([young, entries[3] as JournalEntry], {
        users: new Map([[U1, { posted: 30n, escrow: { ...escrow(100n, 30n), peerAccepted: 50n } }]]),
      }),
    );
    expect(caughtUp.spends).toEqual([50n]);
    expect(caughtUp.earnings).toEqual(new Map([[N1, 20n]]));
    // never accepted, and no longer recent: not posted (the peer's posted spend stays within what it
    // accepted), and its node earns nothing; a later job the peer accepts then posts in full
    const users30 = new Map([[U1, { posted: 30n, escrow: { ...escrow(100n, 30n), peerAccepted: 30n } }]]);
    const old = planBatch(input([{ ...young, recent: false }, entries[3] as JournalEntry], { users: users30 }));
    expect(old.setAside.map((a) => [a.id, a.taken ?? false])).toEqual([
      [young.id, false],
      [entries[3]?.id, false],
    ]);
    expect(old.setAside[0]?.reason).toContain("peer site");
    expect(old.take).toEqual([]);
    expect(old.totalEarnings).toBe(0n);
    const later = charge(U1, 20n, "j3");
    const accepted50 = new Map([[U1, { posted: 30n, escrow: { ...escrow(100n, 30n), peerAccepted: 50n } }]]);
    const next = planBatch(input([later, earn(N1, 20n, "j3")], { users: accepted50 }));
    expect(next.spends).toEqual([50n]);
    expect(next.batchSpent).toBe(20n);
    expect(next.totalEarnings).toBe(20n);
  });

  it("sets aside a peer's charge it signed no receipt for, once it is no longer recent; waits while it is", () => {
    const users = new Map([[U1, { posted: 0n, escrow: { ...escrow(100n), peerAccepted: 100n } }]]);
    const unreceipted = { ...charge(U1, 20n, "j1"), receipted: false };
    const waiting = planBatch(input([{ ...unreceipted, recent: true }, earn(N1, 20n, "j1")], { users }));
    expect(waiting.take).toEqual([]);
    expect(waiting.setAside).toEqual([]);
    const old = planBatch(input([unreceipted, earn(N1, 20n, "j1")], { users }));
    expect(old.take).toEqual([]);
    expect(old.setAside.map((a) => a.reason)).toEqual([expect.stringContaining("no federation receipt"), expect.any(String)]);
  });

  it("keeps a batch within the per-batch cap and the user limit; the rest waits", () => {
    const entries = [charge(U1, 60n, "j1"), earn(N1, 60n, "j1"), charge(U2, 50n, "j2"), earn(N1, 50n, "j2")];
    const capped = planBatch(input(entries, { chain: { totalSpent: 0n, maxBatchSpend: 100n, settleBy: 0n } }));
    expect(capped.take).toEqual([entries[0]?.id, entries[1]?.id]);
    expect(capped.setAside).toEqual([]);
    expect(capped.batchSpent).toBe(60n);
    const oneUser = planBatch(input(entries, { maxUsers: 1 }));
    expect(oneUser.users).toEqual([U1]);
    expect(oneUser.take).toEqual([entries[0]?.id, entries[1]?.id]);
    // a single charge above the cap can never settle: it is set aside, not retried for ever
    const huge = planBatch(
      input([charge(U1, 101n, "j9")], {
        users: new Map([[U1, { posted: 0n, escrow: escrow(1_000n) }]]),
        chain: { totalSpent: 0n, maxBatchSpend: 100n, settleBy: 0n },
      }),
    );
    expect(huge.setAside[0]?.reason).toContain("above the ledger's per-batch cap of 100");
  });
});
