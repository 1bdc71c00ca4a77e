/**
 * Owner-first, end to end: a real `sharedllm node start` daemon (llama-server on the default
 * model) with owner-first on a low threshold and a short quiet period. When programs that are not
 * the node's own (CPU hogs, one per CPU, started by this test beside the daemon, not under it)
 * keep the machine busy, the node yields within 2 s: the coordinator sees it not taking jobs
 * (owner_busy), its job in flight is handed off (to continue elsewhere; here there is no other
 * node, so its stream ends with an error) and new requests get 503; once the hogs stop and the
 * quiet period has passed, it takes jobs again.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { join } from "node:path";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { childPid, quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { MODEL } from "../system.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");
const QUIET_S = 2;

let coordinator: Coordinator;
let database: TestDatabase;
let home: Awaited<ReturnType<typeof tempPaths>>;
let apiKey: string;
let daemon: ChildProcess;
let nodeId: string;
const hogs: ChildProcess[] = [];

const killHogs = () => {
  for (const h of hogs.splice(0)) if (h.exitCode === null && h.signalCode === null) process.kill(-(h.pid as number), "SIGKILL");
};

function chat(extra: Record<string, unknown> = {}): Promise<Response> {
  return fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "Count to one hundred." }], max_tokens: 4, ...extra }),
  });
}

const unit = () => coordinator.fleet.get(nodeId);

beforeAll(async () => {
  database = await testDatabase();
  coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: quietLogger() });
  apiKey = (await createApiKey(coordinator.db, "owner-first")).secret;
  home = await tempPaths("owner-first-");
  daemon = spawn(
    process.execPath,
    [
      BIN,
      "node",
      "start",
      "--coordinator",
      coordinator.url,
      "--token",
      joinToken,
      "--slots",
      "1",
      "--threads",
      "1",
      "--owner-first",
      "--owner-threshold",
      "0.6",
      "--owner-window",
      "1",
      "--owner-quiet",
      String(QUIET_S),
    ],
    { env: { ...process.env, SHAREDLLM_HOME: home.home }, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  let out = "";
  let err = "";
  daemon.stdout?.on("data", (b) => {
    out += b;
  });
  daemon.stderr?.on("data", (b) => {
    err += b;
  });
  nodeId = await waitFor(
    "the node daemon to serve",
    () => {
      if (daemon.exitCode !== null) throw new Error(`the node daemon exited:\n${err}`);
      return /^node (0x[0-9a-f]{40}) serving/m.exec(out)?.[1];
    },
    120_000,
  );
  await waitFor("the node online and taking jobs", () => unit()?.accepting === true, 30_000);
}, 180_000);

afterAll(async () => {
  killHogs();
  if (daemon?.pid && daemon.exitCode === null) {
    const exited = new Promise((r) => daemon.once("exit", r));
    process.kill(-daemon.pid, "SIGKILL");
    await exited;
  }
  await coordinator?.close();
  await database?.cleanup();
  await home?.cleanup();
});

describe("owner-first", () => {
  it("yields within 2 s while others' programs keep the CPUs busy, hands its job off, and comes back after the quiet period", async () => {
    const res = await chat({ max_tokens: 300, temperature: 0, stream: true });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    const rest = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return Date.now();
        text += new TextDecoder().decode(value);
      }
    })();

    // the job stays in flight until it is handed off: its llama-server is frozen until then
    const engine = await childPid(daemon.pid as number, "llama-server");
    process.kill(engine, "SIGSTOP");
    try {
      for (let i = 0; i < cpus().length; i++)
        hogs.push(spawn(process.execPath, ["-e", "for (;;) {}"], { detached: true, stdio: "ignore" }));
      await waitFor("the coordinator to see the node yield", () => unit()?.unavailableReason === "owner_busy", 2_000, 20);
      const seenAt = Date.now();
      expect(unit()?.accepting).toBe(false);
      // handed off for its owner; with no other unit to continue it, its stream ends with an
      // error event once the coordinator's wait for one (5 s) is over
      const endedAt = await rest;
      expect(endedAt - seenAt).toBeLessThan(8_000);
      expect(text).toMatch(/"error".*could continue it/);
      const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
      expect(metrics).toMatch(/^sharedllm_continuations_total\{cause="owner"\} 1$/m);
      expect(metrics).toMatch(/^sharedllm_yields_total\{cause="owner_busy"\} 1$/m);
      const refused = await chat();
      expect(refused.status).toBe(503);
    } finally {
      killHogs();
      process.kill(engine, "SIGCONT");
    }
    const quietFrom = Date.now();
    await waitFor("the node to take jobs again", () => unit()?.accepting === true, 30_000);
    expect(Date.now() - quietFrom).toBeGreaterThanOrEqual(QUIET_S * 1_000);
    const served = await chat();
    expect(served.status).toBe(200);
    expect(served.headers.get("x-sharedllm-node")).toBe(nodeId);
    const events = await coordinator.db
      .selectFrom("events")
      .select("data")
      .where("kind", "=", "node.availability")
      .where("node_id", "=", nodeId)
      .orderBy("at")
      .execute();
    expect(events.map((e) => JSON.parse(e.data))).toEqual([
      { accepting: false, reason: "owner_busy", handOff: true },
      { accepting: true, reason: "resumed" },
    ]);
  }, 120_000);
});
