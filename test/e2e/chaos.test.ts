/**
 * A hosted coordinator under load and under faults (docs/replicas.md): three replica processes
 * (`sharedllm coordinator start --nats-url`) on one PostgreSQL database and a NATS server of the
 * test's own, behind the documented nginx configuration, with credits on the dev chain (its RPC
 * reached through a proxy the test can take away). A real node (llama-server on the default
 * model) joins through nginx; simulated nodes join replicas directly and come back to a live one
 * when theirs goes, as nginx would send them.
 *
 * - A rolling restart (SIGTERM, each replica in turn, started again) under streaming load: every
 *   request completes.
 * - Chaos, with a fixed seed (CHAOS_SEED) for a bounded time (CHAOS_SECONDS; `npm run chaos` runs
 *   longer): streaming and plain clients through nginx while, at random points, a replica is
 *   SIGKILLed, a node is SIGKILLed, the replicas' PostgreSQL connections are cut, NATS restarts and
 *   the chain RPC goes away for a while (CHAOS_FAULTS picks some). Afterwards: no job is charged twice, no receipt is paid
 *   twice, no hold is left, the journal and the chain agree after settlement, no killed process
 *   leaves a child behind, and every client either completed or got a clean error.
 *
 * PostgreSQL only (replicas share a database); skipped where nginx is missing.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { type Db, openDatabase } from "@sharedllm/coordinator";
import { sql } from "kysely";
import type { Address } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKey, devWallet, signIn, startTestChain, type TestChain } from "../chain.ts";
import { freePort, journalSum, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { startNats, type TestNats } from "../nats.ts";
import { type Front, frontCertificate, httpsFetch, nginxMissing, startNginx } from "../nginx.ts";
import { type NodeProcess, startNodeProcess } from "../nodeProcess.ts";
import { countTo, SimNode, signsReceipts } from "../simNode.ts";
import { MODEL } from "../system.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const SEED = Number(process.env.CHAOS_SEED ?? 7);
const SECONDS = Number(process.env.CHAOS_SECONDS ?? 40);
const ALL_FAULTS = ["replica", "node", "postgres", "nats", "chain"] as const;
type Fault = (typeof ALL_FAULTS)[number];
/** the faults to inject (CHAOS_FAULTS=replica,node,...; default all): each once, and one more, at seeded points */
const DEFAULT_FAULTS = ALL_FAULTS.join(",");
const FAULTS = (process.env.CHAOS_FAULTS ?? DEFAULT_FAULTS)
  .split(",")
  .filter((f): f is Fault => (ALL_FAULTS as readonly string[]).includes(f));
/** a client that waits longer than this for its whole answer was left hanging */
const ANSWER_WITHIN_MS = 60_000;

/** mulberry32: the same seed, the same faults at the same points */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A TCP proxy to `target` that can be taken away (connections refused, open ones cut) and brought back. */
async function tcpProxy(target: URL) {
  const port = await freePort();
  const open = new Set<Socket>();
  let server: Server | undefined;
  const up = () =>
    new Promise<void>((resolve) => {
      server = createServer((client) => {
        const upstream = connect(Number(target.port), target.hostname);
        for (const s of [client, upstream]) {
          open.add(s);
          s.on("error", () => undefined);
          s.once("close", () => open.delete(s));
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, "127.0.0.1", resolve);
    });
  const down = async () => {
    const closed = new Promise((r) => server?.close(r));
    for (const s of open) s.destroy();
    await closed;
  };
  await up();
  return { url: `http://127.0.0.1:${port}`, up, down };
}

interface Replica {
  port: number;
  home: string;
  child?: ChildProcess;
  exited?: Promise<unknown>;
  /** its latest start, until it answers */
  starting?: Promise<void>;
  stderr: string;
}

let chain: TestChain;
let rpc: Awaited<ReturnType<typeof tcpProxy>>;
let nats: TestNats;
let database: TestDatabase;
let store: Db;
let front: Front;
let ca: string;
let certFile: string;
let joinToken: string;
let coordinator: Address;
const replicas: Replica[] = [];
const homes: Awaited<ReturnType<typeof tempPaths>>[] = [];
let realNode: NodeProcess | undefined;
const sims: { sim?: SimNode; account: ReturnType<typeof privateKeyToAccount>; live: boolean }[] = [];
const keys: { key: string; user: Address }[] = [];

function startReplica(r: Replica): Promise<void> {
  r.stderr = "";
  const args = ["coordinator", "start", "--host", "127.0.0.1", "--port", String(r.port), "--nats-url", nats.url];
  args.push("--chain-rpc-url", rpc.url, "--ledger", chain.ledger, "--settle-after", "2", "--no-index");
  if (process.env.CHAOS_DEBUG) args.push("--verbose");
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, SHAREDLLM_HOME: r.home, DATABASE_URL: database.databaseUrl },
    stdio: ["ignore", "ignore", "pipe"],
    detached: true,
  });
  child.stderr?.on("data", (b) => {
    r.stderr = (r.stderr + b).slice(process.env.CHAOS_DEBUG ? -2_000_000 : -4000);
  });
  r.child = child;
  r.exited = new Promise((res) => child.once("exit", res));
  return waitFor(
    `replica on ${r.port}`,
    async () => {
      if (child.exitCode !== null) throw new Error(`the replica exited: ${r.stderr}`);
      return (await fetch(`http://127.0.0.1:${r.port}/healthz`).catch(() => undefined))?.ok;
    },
    60_000,
    100,
  ).then(() => undefined);
}

async function killReplica(r: Replica, signal: "SIGKILL" | "SIGTERM"): Promise<void> {
  if (!r.child || r.child.exitCode !== null || r.child.signalCode !== null) return;
  process.kill(-(r.child.pid as number), signal);
  await r.exited;
}

const liveReplicas = () => replicas.filter((r) => r.child && r.child.exitCode === null && r.child.signalCode === null);

/** Keeps simulated node `i` connected: when its channel closes, it joins a live replica again. */
async function keepSim(i: number): Promise<void> {
  const slot = sims[i] as (typeof sims)[0];
  while (slot.live) {
    const live = liveReplicas();
    const r = live[(i + Math.floor(Math.random() * live.length)) % Math.max(1, live.length)];
    if (!r) {
      await new Promise((res) => setTimeout(res, 200));
      continue;
    }
    const sim: SimNode = new SimNode({
      coordinatorUrl: `http://127.0.0.1:${r.port}`,
      joinToken,
      models: ["sim-model"],
      slots: 4,
      account: slot.account,
      // no room for another model: the coordinator never asks it to load the real node's model (it would not)
      freeMemoryBytes: 0,
      onJob: countTo(12, 40),
      onReceiptRequest: (req, send) => signsReceipts(slot.account)(req, send),
    });
    try {
      await sim.start();
    } catch {
      await new Promise((res) => setTimeout(res, 300));
      continue;
    }
    slot.sim = sim;
    await new Promise((res) => sim.ws?.once("close", res));
    await new Promise((res) => setTimeout(res, 200));
  }
}

type Outcome = "completed" | "clean_error" | "bad";

/** One request through nginx; what its client saw. */
async function request(key: string, model: string, stream: boolean): Promise<{ outcome: Outcome; detail: string }> {
  let status = 0;
  let body = "";
  let node = "";
  // an answer that never comes is no clean error: the client is left waiting
  const timeout = AbortSignal.timeout(ANSWER_WITHIN_MS);
  try {
    const res = await httpsFetch(`${front.url}/v1/chat/completions`, {
      ca,
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model, stream, max_tokens: 12, messages: [{ role: "user", content: "Count to twelve." }] }),
      signal: timeout,
    });
    status = res.status;
    node = String(res.headers["x-sharedllm-node"] ?? "");
    body = await res.text();
  } catch (err) {
    if (timeout.aborted) {
      return {
        outcome: "bad",
        detail: `no answer within ${ANSWER_WITHIN_MS} ms (${model}, ${stream ? "streamed" : "plain"}, HTTP ${status}, node ${node}): ${body.slice(-200)}`,
      };
    }
    // the connection failed or was cut mid-answer: the client knows it has no whole answer
    return { outcome: "clean_error", detail: `connection (${stream ? "streamed" : "plain"}, HTTP ${status}): ${(err as Error).message}` };
  }
  if (status !== 200) {
    const shaped = (() => {
      try {
        return typeof (JSON.parse(body) as { error?: { message?: unknown } }).error?.message === "string";
      } catch {
        return false;
      }
    })();
    // nginx's own 502/504 page when no replica answered is an HTTP error a client sees as one
    return { outcome: shaped || status >= 500 ? "clean_error" : "bad", detail: `HTTP ${status}: ${body.slice(0, 200)}` };
  }
  if (!stream) {
    try {
      const content = (JSON.parse(body) as { choices: { message: { content: string } }[] }).choices[0]?.message.content;
      return typeof content === "string" ? { outcome: "completed", detail: "" } : { outcome: "bad", detail: body.slice(0, 200) };
    } catch {
      return { outcome: "bad", detail: `unreadable body: ${body.slice(0, 200)}` };
    }
  }
  if (body.trimEnd().endsWith("data: [DONE]")) return { outcome: "completed", detail: "" };
  // a stream that fails ends with an error event (what the openai client raises as an APIError)
  const last = body.trimEnd().split("\n").at(-1) ?? "";
  if (last.startsWith('data: {"error":')) return { outcome: "clean_error", detail: last.slice(0, 200) };
  return { outcome: "bad", detail: `a stream that ended without [DONE]: ${body.slice(-200)}` };
}

/** Clients sending requests through nginx until `until`; the outcomes by kind. */
async function load(clients: number, until: () => boolean, pick: (n: number) => { model: string; stream: boolean }) {
  const counts = { requests: 0, completed: 0, clean_error: 0, bad: 0 };
  const bad: string[] = [];
  const errors = new Map<string, number>();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let n = 0; !until(); n++) {
        const { model, stream } = pick(n + c);
        const { key } = keys[(n + c) % keys.length] as (typeof keys)[0];
        const { outcome, detail } = await request(key, model, stream);
        counts.requests++;
        counts[outcome]++;
        if (outcome === "bad") bad.push(detail);
        if (outcome === "clean_error") {
          const kind = detail.replace(/\d+/g, "#").slice(0, 120);
          errors.set(kind, (errors.get(kind) ?? 0) + 1);
        }
      }
    }),
  );
  return { counts, bad, errors };
}

/** Charges not yet in a confirmed batch, and batches not confirmed. */
async function unsettled(): Promise<number> {
  const { rows } = await sql<{ n: string }>`
    select count(*) as n from ledger_entries e
    where e.kind in ('charge', 'earn') and not exists (select 1 from batch_entries b where b.entry_id = e.id)`.execute(store);
  const open = await store.selectFrom("settlements").select("batch_id").where("status", "!=", "confirmed").execute();
  return Number(rows[0]?.n) + open.length;
}

describe.skipIf(!process.env.DATABASE_URL || nginxMissing)("a hosted coordinator: replicas behind nginx, under faults", () => {
  beforeAll(async () => {
    chain = await startTestChain();
    rpc = await tcpProxy(new URL(chain.rpcUrl));
    nats = await startNats();
    database = await testDatabase();
    store = await openDatabase({ databaseUrl: database.databaseUrl, dataDir: "unused" });
    // one coordinator: its key and join token in every replica's home
    const key = generatePrivateKey();
    coordinator = privateKeyToAccount(key).address;
    await chain.addCoordinator(coordinator);
    joinToken = randomBytes(32).toString("base64url");
    const dir = await tempPaths("sharedllm-chaos-");
    homes.push(dir);
    const made = await frontCertificate(dir.home);
    certFile = made.cert;
    ca = made.ca;
    for (let i = 0; i < 3; i++) {
      const home = await tempPaths("sharedllm-chaos-replica-");
      homes.push(home);
      await writeFile(join(home.home, "secrets.json"), JSON.stringify({ joinToken }), { mode: 0o600 });
      await writeFile(join(home.home, "coordinator-key.json"), JSON.stringify({ address: coordinator, privateKey: key }), { mode: 0o600 });
      const r: Replica = { port: await freePort(), home: home.home, stderr: "" };
      replicas.push(r);
      await startReplica(r);
    }
    front = await startNginx({ replicas: replicas.map((r) => `127.0.0.1:${r.port}`), cert: certFile, key: made.key });
    // a real node joins through nginx, as an owner's machine would
    realNode = await startNodeProcess({
      coordinatorUrl: front.url,
      joinToken,
      args: ["--coordinator-ca", certFile, "--slots", "2", "--threads", "1", "--no-owner-first"],
    });
    for (let i = 0; i < 4; i++) {
      sims.push({ account: privateKeyToAccount(generatePrivateKey()), live: true });
      void keepSim(i);
    }
    const first = `http://127.0.0.1:${(replicas[0] as Replica).port}`;
    for (let i = 0; i < 3; i++) {
      const user = devWallet(31 + i);
      await chain.fund(user.address);
      await chain.deposit(user, 1_000_000n, coordinator);
      keys.push({ key: await createKey(first, await signIn(first, user, chain.chainId)), user: user.address });
    }
    await waitFor(
      "every replica to see every node",
      async () => {
        for (const r of replicas) {
          const h = (await (await fetch(`http://127.0.0.1:${r.port}/healthz`)).json()) as { nodes: number };
          if (h.nodes !== 5) return false;
        }
        return true;
      },
      60_000,
      200,
    );
  }, 300_000);

  afterAll(async () => {
    for (const s of sims) {
      s.live = false;
      s.sim?.stop();
    }
    await realNode?.cleanup();
    for (const r of replicas) await killReplica(r, "SIGKILL");
    await front?.stop();
    await store?.destroy();
    await database?.cleanup();
    await nats?.stop();
    await rpc?.down();
    await chain?.stop();
    for (const h of homes) await h.cleanup();
  });

  it("a rolling restart of every replica under streaming load loses no request", async () => {
    let done = false;
    const running = load(
      4,
      () => done,
      (n) => ({ model: "sim-model", stream: n % 4 !== 3 }),
    );
    /** the requests nginx had a replica answer with 200 */
    const answered = async (r: Replica) =>
      (await front.accessLog())
        .split("\n")
        .filter((l) => new RegExp(`upstream=(?:\\S+, )*127\\.0\\.0\\.1:${r.port} upstream_status=(?:\\S+, )*200 `).test(l)).length;
    for (const r of replicas) {
      // told to stop, as a rolling restart does: it drains, then exits; then it comes back
      await killReplica(r, "SIGTERM");
      expect(r.child?.exitCode).toBe(0);
      const before = await answered(r);
      await startReplica(r);
      // the operator moves on once nginx sends the restarted replica requests again
      await waitFor("nginx to use the restarted replica", async () => (await answered(r)) > before, 30_000, 200);
    }
    done = true;
    const { counts, bad, errors } = await running;
    process.stdout.write(`rolling restart: ${JSON.stringify(counts)} ${JSON.stringify([...errors])}\n`);
    if (process.env.CHAOS_DEBUG)
      process.stdout.write(
        (await front.accessLog())
          .split("\n")
          .filter((l) => /upstream_status=50[23]/.test(l) && !/upstream=sharedllm_api /.test(l))
          .slice(0, 40)
          .join("\n"),
      );
    expect(bad).toEqual([]);
    expect(counts.clean_error).toBe(0);
    expect(counts.completed).toBe(counts.requests);
    expect(counts.requests).toBeGreaterThan(20);
  }, 240_000);

  it(`chaos (seed ${SEED}, ${SECONDS} s): nothing charged or paid twice, no hold left, the chain agrees, every client answered`, async () => {
    const rand = random(SEED);
    const faults = FAULTS;
    // every fault once, and one more, at random points of the run
    const plan = [...faults, faults[Math.floor(rand() * faults.length)] as Fault]
      .map((kind) => ({ kind, at: 3_000 + rand() * (SECONDS * 1000 - 12_000) }))
      .sort((a, b) => a.at - b.at);
    const t0 = Date.now();
    const end = t0 + SECONDS * 1000;
    const running = load(
      6,
      () => Date.now() > end,
      (n) => ({ model: n % 5 === 4 ? MODEL : "sim-model", stream: n % 2 === 0 }),
    );
    const happened: string[] = [];
    const engines: number[] = [];
    for (const f of plan) {
      await new Promise((r) => setTimeout(r, Math.max(0, t0 + f.at - Date.now())));
      happened.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${f.kind}`);
      if (f.kind === "replica") {
        const r = replicas[Math.floor(rand() * replicas.length)] as Replica;
        await killReplica(r, "SIGKILL");
        r.starting = startReplica(r);
      } else if (f.kind === "node") {
        if (rand() < 0.5 && realNode) {
          // the real node, as a power cut would: its llama-server with it
          engines.push((await realNode.engine()).pid);
          await realNode.kill();
          realNode = await startNodeProcess({
            coordinatorUrl: front.url,
            joinToken,
            home: realNode.home,
            args: ["--coordinator-ca", certFile, "--slots", "2", "--threads", "1", "--no-owner-first"],
          });
        } else {
          (sims[Math.floor(rand() * sims.length)] as (typeof sims)[0]).sim?.ws?.terminate();
        }
      } else if (f.kind === "postgres") {
        await sql`select pg_terminate_backend(pid) from pg_stat_activity
                  where datname = current_database() and pid <> pg_backend_pid()`.execute(store);
      } else if (f.kind === "nats") {
        await nats.stop();
        await new Promise((r) => setTimeout(r, 1_000));
        await nats.start();
      } else {
        await rpc.down();
        await new Promise((r) => setTimeout(r, 3_000));
        await rpc.up();
      }
    }
    const { counts, bad, errors } = await running;
    // every replica runs again (none stopped but those killed); a killed one's jobs and holds are ended by a live one once its lease lapses
    for (const r of replicas) await r.starting;
    const crashed = replicas.filter((r) => !liveReplicas().includes(r)).map((r) => `replica on ${r.port}: ${r.stderr}`);
    expect(crashed).toEqual([]);
    await waitFor(
      "no hold left",
      async () =>
        (await sql<{ held: string }>`select coalesce(sum(held), 0) as held from credit_accounts`.execute(store)).rows[0]?.held === "0",
      60_000,
      500,
    ).catch(async (err) => {
      // which jobs hold credits still, and what their rows and replicas say
      const open = await sql`select h.job_id, h.instance_id, h.created_at, j.status, j.error, j.instance_id as job_instance,
          (select seen_at from coordinator_instances i where i.id = h.instance_id) as holder_seen
        from ledger_entries h left join jobs j on j.id = h.job_id
        where h.kind = 'hold' and not exists (select 1 from ledger_entries r where r.job_id = h.job_id and r.kind = 'release')`.execute(
        store,
      );
      console.log("holds left:", JSON.stringify(open.rows), "faults:", happened.join(", "));
      throw err;
    });
    await waitFor("every charge and earning settled", async () => (await unsettled()) === 0, 90_000, 500);

    const charges = await sql<{ n: string }>`select count(*) as n from ledger_entries where kind = 'charge'`.execute(store);
    const receipts = await sql<{ n: string }>`select count(*) as n from receipts where status = 'accepted'`.execute(store);
    let continuations = 0;
    for (const r of replicas) {
      const text = await (await fetch(`http://127.0.0.1:${r.port}/metrics`)).text();
      for (const m of text.matchAll(/^sharedllm_continuations_total\{[^}]*\} (\d+)/gm)) continuations += Number(m[1]);
    }
    process.stdout.write(
      `chaos (seed ${SEED}, ${SECONDS} s): faults ${happened.join(", ")}\n` +
        `  requests ${counts.requests}, completed ${counts.completed}, clean errors ${counts.clean_error}, bad ${counts.bad}, ` +
        `continuations ${continuations} (replicas alive at the end), charges ${charges.rows[0]?.n}, receipts ${receipts.rows[0]?.n}\n` +
        `  clean errors by kind: ${JSON.stringify([...errors])}\n`,
    );

    if (process.env.CHAOS_DEBUG) {
      for (const r of replicas) await writeFile(`/tmp/chaos-replica-${r.port}.log`, r.stderr);
      await writeFile("/tmp/chaos-node.log", realNode?.output() ?? "");
    }
    // every client either completed or got a clean error
    expect(bad).toEqual([]);
    expect(counts.completed).toBeGreaterThan(counts.requests / 2);
    // no job charged twice, no receipt paid twice
    const twiceCharged = await sql`select job_id from ledger_entries where kind = 'charge' group by job_id having count(*) > 1`.execute(
      store,
    );
    expect(twiceCharged.rows).toEqual([]);
    const twicePaid =
      await sql`select job_id, address from ledger_entries where kind = 'earn' group by job_id, address having count(*) > 1`.execute(store);
    expect(twicePaid.rows).toEqual([]);
    // no hold left: each released or turned into its charge
    for (const { user } of keys) {
      const u = user.toLowerCase();
      expect(await journalSum(store, u, "hold")).toBe(await journalSum(store, u, "release"));
      // the journal and the chain agree
      expect((await chain.escrow(user, coordinator)).spent).toBe(await journalSum(store, u, "charge"));
    }
    // no killed node left its engine running
    for (const pid of engines) {
      await waitFor(
        `the killed node's llama-server ${pid} to be gone`,
        () => {
          try {
            process.kill(pid, 0);
            return false;
          } catch {
            return true;
          }
        },
        10_000,
      );
    }
  }, 600_000);
});
