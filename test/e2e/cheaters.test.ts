/**
 * Verified contribution on real parts (docs/verification.md): a coordinator with the real
 * contracts on a dev chain, a trusted auditor and an honest node, and cheating nodes, each a real
 * `sharedllm node start` daemon with one behaviour changed by its test-only switch
 * (SHAREDLLM_TEST_CHEAT): one reports inflated token counts, one streams random tokens of
 * plausible length instead of running its model, one serves the default model requantised to 2
 * bits while claiming the default (its name and sha256). Every node here is new, so every one of
 * its paid jobs is audited. The bound: a cheater is caught at its first greedy job (the first
 * round is greedy), since one audit scores 8 positions and each cheat fails a position with high
 * probability (random tokens: all but never the auditor's choice; inflated counts: the prompt
 * recount, whatever the output; the 2-bit model: it leaves the greedy path within its first
 * tokens); at its second failed audit it is excluded (excludeAfter 2). It earns nothing for the
 * window in which it cheated; the honest node beside it is paid in full.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { loadNodeIdentity } from "@sharedllm/node";
import { type AuditsResponse, type EarningsResponse, receiptJobId } from "@sharedllm/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { type NodeProcess, startNodeProcess } from "../nodeProcess.ts";
import { requantizedDefault } from "../requantized.ts";
import { MODEL } from "../system.ts";

const joinToken = randomBytes(32).toString("base64url");
/** earnings wait this long for their audits before they may settle */
const WINDOW_MS = 4_000;
const CHEATS = ["inflate", "random", "requantised"] as const;

let chain: TestChain;
let database: TestDatabase;
let coordinator: Coordinator;
let apiKey: string;
let operatorKey: string;
let auditor: NodeProcess;
let honest: NodeProcess;
const cheaters = new Map<(typeof CHEATS)[number], NodeProcess>();
let auditorHome: Awaited<ReturnType<typeof tempPaths>>;

const node = (args: string[], env: Record<string, string> = {}, home?: string) =>
  startNodeProcess({ coordinatorUrl: coordinator.url, joinToken, args: ["--slots", "1", "--no-owner-first", ...args], env, home });

function chat(body: Record<string, unknown>): Promise<Response> {
  return fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, max_tokens: 24, ...body }),
  });
}

async function audits(): Promise<AuditsResponse> {
  const res = await fetch(`${coordinator.url}/v1/audits?limit=500`, { headers: { authorization: `Bearer ${operatorKey}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as AuditsResponse;
}

async function earnings(id: string): Promise<EarningsResponse> {
  return (await (await fetch(`${coordinator.url}/v1/earnings/${id}`)).json()) as EarningsResponse;
}

/** One round: as many concurrent jobs as there are one-slot nodes, so each node serves one. */
async function round(body: Record<string, unknown>, n: number): Promise<void> {
  const answers = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      chat({ ...body, messages: [{ role: "user", content: `Name ${i + 2} fruits and their colours.` }] }),
    ),
  );
  for (const a of answers) expect(a.status).toBe(200);
}

beforeAll(async () => {
  if (process.env.DATABASE_URL) return;
  chain = await startTestChain();
  database = await testDatabase();
  // the auditor's identity first: the coordinator trusts it by its node id
  auditorHome = await tempPaths("sharedllm-auditor-");
  const auditorId = ((await loadNodeIdentity(auditorHome.home)) as { nodeId: string }).nodeId;
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    ledger: { ...chain.ledgerOptions(), audits: { auditors: [auditorId], windowMs: WINDOW_MS, excludeAfter: 2 } },
  });
  const wallet = devWallet(14);
  await chain.deposit(wallet, 10_000_000n);
  apiKey = await createKey(coordinator.url, await signIn(coordinator.url, wallet, chain.chainId));
  const { createApiKey } = await import("@sharedllm/coordinator");
  operatorKey = (await createApiKey(coordinator.db, "operator")).secret;
  [auditor, honest] = await Promise.all([node(["--auditor"], {}, auditorHome.home), node([])]);
  const cheap = await requantizedDefault("Q2_K");
  const switches = { inflate: "inflate", random: "random", requantised: `model=${cheap.path}` } as const;
  for (const cheat of CHEATS) cheaters.set(cheat, await node([], { SHAREDLLM_TEST_CHEAT: switches[cheat] }));
  await waitFor("every node online", () => coordinator.fleet.list().filter((n) => n.accepting).length === 2 + CHEATS.length, 30_000);
}, 400_000);

afterAll(async () => {
  for (const c of cheaters.values()) await c.cleanup();
  await honest?.cleanup();
  await auditor?.cleanup();
  await auditorHome?.cleanup();
  await coordinator?.close();
  await database?.cleanup();
  await chain?.stop();
});

// real engines, minutes of CPU: run on PGlite only (auditFlow.test.ts takes the same database paths on PostgreSQL)
describe.skipIf(!!process.env.DATABASE_URL)("audits of paid jobs", () => {
  it("catches each cheater at its first job, excludes it at its second failed audit, and penalises no honest node", async () => {
    const nodes = 2 + CHEATS.length;
    await round({ temperature: 0 }, nodes);
    // more jobs than slots: suspects (which wait behind nodes without failed audits) get some too
    await round({ temperature: 0.8, seed: 7 }, 2 * nodes);
    await round({ temperature: 0 }, 2 * nodes);
    const done = await waitFor(
      "every audit finished",
      async () => {
        const a = await audits();
        return a.totals.queued + a.totals.running === 0 && a.totals.passed + a.totals.failed > 0 ? a : undefined;
      },
      180_000,
      500,
    );
    const record = (id: string) => done.nodes.find((n) => n.node === id);
    // the auditor's own jobs are not audited; every other node's paid job is (new nodes: rate 1)
    expect(record(auditor.id)).toBeUndefined();
    expect(record(honest.id)).toMatchObject({ failed: 0, suspicion: 0, excluded: null });
    expect(record(honest.id)?.passed).toBeGreaterThan(0);
    for (const [cheat, c] of cheaters) {
      const r = record(c.id);
      expect(r, cheat).toBeDefined();
      // caught at its first job (a greedy one)
      const mine = done.recent.filter((a) => a.node === c.id).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
      expect(mine[0]?.status, cheat).toBe("failed");
      expect(r?.failed, cheat).toBeGreaterThanOrEqual(1);
      const failures = mine.filter((a) => a.status === "failed");
      expect(failures.length, cheat).toBe(r?.failed);
      // the evidence is kept: what the receipt committed to, the claimed tokens and the auditor's scores
      for (const f of failures) {
        expect(f.evidence?.outputHash).toMatch(/^0x[0-9a-f]{64}$/);
        expect(f.evidence?.scores.length).toBeGreaterThan(0);
        expect(f.reason).toBeTruthy();
      }
      if ((r?.failed ?? 0) >= 2) {
        // excluded: disconnected, and its key may not register again
        expect(r?.excluded?.reason).toMatch(/failed audits/);
        await waitFor(`${cheat} cut off`, () => !coordinator.fleet.get(c.id));
      }
    }
  }, 400_000);

  it("a cheater earns nothing for its window; the honest node's earnings settle and can be claimed", async () => {
    // past the window, with no audit open: the honest node's earnings go into a batch
    const honestEarned = await waitFor(
      "the honest node's earnings settled",
      async () => {
        const e = await earnings(honest.id);
        return BigInt(e.settled) > 0n && BigInt(e.pending) === 0n ? e : undefined;
      },
      60_000,
      500,
    );
    expect(BigInt(honestEarned.setAside)).toBe(0n);
    expect(BigInt(honestEarned.claimable)).toBe(BigInt(honestEarned.earned));
    expect(honestEarned.audits.failed).toBe(0);
    for (const [cheat, c] of cheaters) {
      const e = await earnings(c.id);
      expect(e.audits.failed, cheat).toBeGreaterThanOrEqual(1);
      // a job caught cheating earns nothing: its earning, if it was signed for, is set aside
      const caught = await coordinator.db
        .selectFrom("audits")
        .select("job_id")
        .where("node_id", "=", c.id)
        .where("status", "=", "failed")
        .execute();
      const paid = await coordinator.db
        .selectFrom("ledger_entries as e")
        .select("e.job_id")
        .where("e.address", "=", c.id)
        .where("e.kind", "=", "earn")
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom("set_aside_entries as a").select("a.entry_id").whereRef("a.entry_id", "=", "e.id"))),
        )
        .execute();
      const paidJobs = new Set(paid.map((p) => p.job_id));
      for (const a of caught) expect(paidJobs.has(receiptJobId(a.job_id)), cheat).toBe(false);
      // cheats caught on every job earn nothing at all (the requantised model passes some sampled
      // audits: those jobs, outside a failed audit's window, are paid)
      if (cheat !== "requantised") {
        expect(BigInt(e.settled), cheat).toBe(0n);
        expect(BigInt(e.claimable), cheat).toBe(0n);
      }
      // forfeited earnings are set aside with their reason
      const setAside = await coordinator.db
        .selectFrom("set_aside_entries as a")
        .innerJoin("ledger_entries as e", "e.id", "a.entry_id")
        .select(["a.reason", "e.amount"])
        .where("e.address", "=", c.id)
        .execute();
      for (const s of setAside) expect(s.reason, cheat).toMatch(/^forfeited: audit audit_/);
    }
  }, 120_000);

  it("the operator sees the audits; a wallet's key may not; clearing a node lets it register again", async () => {
    const anon = await fetch(`${coordinator.url}/v1/audits`);
    expect(anon.status).toBe(401);
    const wallet = await fetch(`${coordinator.url}/v1/audits`, { headers: { authorization: `Bearer ${apiKey}` } });
    expect(wallet.status).toBe(403);
    expect(((await wallet.json()) as { error: { code: string } }).error.code).toBe("permission_denied");
    const excluded = (await audits()).nodes.find((n) => n.excluded);
    if (!excluded) return;
    const cleared = await fetch(`${coordinator.url}/v1/audits/nodes/${excluded.node}/clear`, {
      method: "POST",
      headers: { authorization: `Bearer ${operatorKey}` },
    });
    expect(cleared.status).toBe(200);
    const after = (await audits()).nodes.find((n) => n.node === excluded.node);
    expect(after).toMatchObject({ suspicion: 0, excluded: null });
  });
});
