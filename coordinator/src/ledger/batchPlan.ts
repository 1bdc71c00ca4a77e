/**
 * What the next settlement batch takes, decided without I/O. The settler gives it the journal
 * entries no batch took yet, what earlier batches took, each paying user's escrow as the chain has
 * it now, and the chain's totals and cap; it returns the entries to take and those to set aside for
 * good, with the reason. Whatever an entry says, the batch it returns cannot revert on the
 * contract's checks, and it never pays nodes more for a job than the user was charged for it:
 * - a charge the user's escrow no longer covers (they withdrew first) is still posted, so the ledger
 *   records the user's shortfall (and the journal keeps it as their debt), but it is also set aside
 *   (taken and set aside, with the reason) so that nothing is earned on that job;
 * - a peer coordinator's escrow covers only what it accepted owing this one (docs/federation.md,
 *   Clearing): a charge it got no receipt for is set aside; its charges beyond what it accepted
 *   wait while they are recent (the peer posts its acceptances on its own schedule) and are then
 *   set aside, never posted, so that its posted spend stays within what it accepted;
 * - what nodes earned on a job beyond its charge, or on a job with no charge, is set aside;
 * - the batch moves at most the contract's per-batch cap of spend (the rest waits for the next
 *   batch), and at most `maxUsers` users (a storage write each).
 */
import type { Address } from "viem";
import type { Escrow } from "./chain.js";

export interface JournalEntry {
  id: string;
  /** lower-case address: the user for a charge, the node for an earning */
  address: Address;
  kind: "charge" | "earn";
  amount: bigint;
  jobId: string | null;
  /** made within the peer grace (SettlementOptions.peerGraceMs): a peer coordinator may not have accepted it yet */
  recent?: boolean;
  /** a charge to a peer coordinator: whether this site signed it a federation receipt for the job */
  receipted?: boolean;
}

/** What earlier batches (and set-aside entries) say about a job that new earnings name. */
export interface JobHistory {
  /** charges of the job taken by earlier batches */
  charged: bigint;
  /** earnings of the job taken by earlier batches */
  earned: bigint;
  /** a charge of the job was set aside: its user did not pay for it */
  chargeSetAside: boolean;
}

export interface PlanInput {
  /** entries no batch took and none set aside, in id order */
  entries: JournalEntry[];
  /** for each user with a new charge: their cumulative charges in earlier batches, and escrow on chain now */
  users: Map<Address, { posted: bigint; escrow: Escrow }>;
  /** for each job a new earning names */
  jobs: Map<string, JobHistory>;
  /** each node's cumulative earnings in earlier batches */
  earnings: Map<Address, bigint>;
  chain: {
    /** the coordinator's settled totals on chain */
    totalSpent: bigint;
    /** maxBatchSpend of the contract */
    maxBatchSpend: bigint;
    /** chain time (s), plus how long the batch may take to be mined: a withdrawal unlocking before then counts as taken */
    settleBy: bigint;
  };
  maxUsers: number;
}

export interface SetAside {
  id: string;
  reason: string;
  /** the batch still posts it (a charge posted as the user's shortfall) */
  taken?: boolean;
}

export interface BatchPlan {
  /** ids of the entries this batch takes */
  take: string[];
  setAside: SetAside[];
  users: Address[];
  /** cumulative spend per user, as settle() takes it */
  spends: bigint[];
  /** every node's cumulative earnings including this batch */
  earnings: Map<Address, bigint>;
  totalEarnings: bigint;
  /** spend this batch adds on chain */
  batchSpent: bigint;
}

/** What settle() can still charge a user at `at`: all of their escrow, less a withdrawal whose notice is over by then. */
export function coverable(e: Escrow, at: bigint): bigint {
  // the withdrawal takes what it announced, at most what is unspent
  const left =
    e.pendingWithdrawal === 0n || at < e.unlockAt
      ? e.deposited
      : e.pendingWithdrawal < e.deposited - e.spent
        ? e.deposited - e.pendingWithdrawal
        : e.spent;
  // a peer coordinator's escrow: no more than it accepted owing this one
  return e.peerAccepted !== undefined && e.peerAccepted < left ? e.peerAccepted : left;
}

export function planBatch(input: PlanInput): BatchPlan {
  const take: string[] = [];
  const setAside: SetAside[] = [];
  const posted = new Map<Address, bigint>();
  let batchSpent = 0n;
  let full = false;
  // per job: charges taken now, whether one was set aside or deferred now
  const charged = new Map<string, bigint>();
  const chargeAside = new Set<string>();
  const chargeDeferred = new Set<string>();

  for (const c of input.entries) {
    if (c.kind !== "charge") continue;
    const user = input.users.get(c.address);
    if (!user) throw new Error(`no escrow was read for ${c.address}`);
    const before = posted.get(c.address) ?? user.posted;
    const after = before + c.amount;
    const peer = user.escrow.peerAccepted !== undefined;
    const cover = coverable(user.escrow, input.chain.settleBy);
    // spend a cumulative posting adds on chain: clamped to what the escrow covers, never below what is settled
    const onChain = user.escrow.spent;
    const adds = (cumulative: bigint) => {
      const settled = cumulative < cover ? cumulative : cover;
      return settled > onChain ? settled - onChain : 0n;
    };
    const delta = adds(after) - adds(before);
    const job = c.jobId ?? "";
    if (peer && (c.receipted === false || after > cover)) {
      if (c.recent) {
        // its receipt is signed just after the charge, and the peer posts what it accepts owing on
        // its own schedule: a recent charge waits for both
        chargeDeferred.add(job);
        continue;
      }
      // never posted beyond what the peer accepted, nor without a receipt it could accept: its
      // posted spend stays within what it accepted, so the charges it accepts later post in full
      setAside.push({
        id: c.id,
        reason:
          c.receipted === false
            ? `no federation receipt was signed to peer site ${c.address} for this job (it went away first): it is not posted, nothing is earned on it`
            : `peer site ${c.address} accepted owing ${cover} credits, and with this charge ${after} would be spent: it is not posted, nothing is earned on this job`,
      });
      chargeAside.add(job);
      continue;
    }
    if (delta > input.chain.maxBatchSpend) {
      setAside.push({
        id: c.id,
        reason: `charge of ${c.amount} credits is above the ledger's per-batch cap of ${input.chain.maxBatchSpend}`,
      });
      chargeAside.add(job);
      continue;
    }
    const newUser = !posted.has(c.address);
    if (full || batchSpent + delta > input.chain.maxBatchSpend || (newUser && posted.size >= input.maxUsers)) {
      // the batch is full: this charge and every later one wait for the next batch
      full = true;
      chargeDeferred.add(job);
      continue;
    }
    posted.set(c.address, after);
    batchSpent += delta;
    take.push(c.id);
    if (after > cover) {
      setAside.push({
        id: c.id,
        taken: true,
        reason: `escrow of ${c.address} covers ${cover} credits, and with this charge ${after} were spent (the user withdrew before it was settled): posted as their shortfall, nothing is earned on this job`,
      });
      chargeAside.add(job);
      continue;
    }
    charged.set(job, (charged.get(job) ?? 0n) + c.amount);
  }

  const earnings = new Map(input.earnings);
  const earned = new Map<string, bigint>();
  const takenEarns: JournalEntry[] = [];
  for (const e of input.entries) {
    if (e.kind !== "earn") continue;
    const job = e.jobId ?? "";
    const history = input.jobs.get(job) ?? { charged: 0n, earned: 0n, chargeSetAside: false };
    if (chargeDeferred.has(job)) continue;
    if (history.chargeSetAside || chargeAside.has(job)) {
      setAside.push({ id: e.id, reason: `the charge of job ${job} was set aside (its user could not pay), so nothing is earned on it` });
      continue;
    }
    const jobCharged = history.charged + (charged.get(job) ?? 0n);
    if (jobCharged === 0n) {
      setAside.push({ id: e.id, reason: `no charge is recorded for job ${job}` });
      continue;
    }
    const jobEarned = (earned.get(job) ?? history.earned) + e.amount;
    if (jobEarned > jobCharged) {
      setAside.push({ id: e.id, reason: `earnings on job ${job} would reach ${jobEarned} credits, above its charge of ${jobCharged}` });
      continue;
    }
    earned.set(job, jobEarned);
    earnings.set(e.address, (earnings.get(e.address) ?? 0n) + e.amount);
    takenEarns.push(e);
  }

  // last line of defence: never post earnings above what the chain will hold as spent
  let totalEarnings = [...earnings.values()].reduce((a, b) => a + b, 0n);
  const totalSpent = input.chain.totalSpent + batchSpent;
  while (totalEarnings > totalSpent) {
    const e = takenEarns.pop();
    if (!e) {
      throw new Error(
        `earlier batches hold ${totalEarnings} credits of earnings and the chain only ${totalSpent} of spend: this journal does not match the ledger`,
      );
    }
    earnings.set(e.address, (earnings.get(e.address) ?? 0n) - e.amount);
    totalEarnings -= e.amount;
    setAside.push({
      id: e.id,
      reason: `earnings would reach ${totalEarnings + e.amount} credits, above the ${totalSpent} settled as spent`,
    });
  }
  take.push(...takenEarns.map((e) => e.id));
  for (const [node, v] of earnings) if (v === 0n) earnings.delete(node);

  const users = [...posted.keys()];
  return { take, setAside, users, spends: users.map((u) => posted.get(u) as bigint), earnings, totalEarnings, batchSpent };
}
