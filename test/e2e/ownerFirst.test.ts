/**
 * Owner-first, end to end: a real `sharedllm node start` daemon (llama-server on the default
 * model) with owner-first on a low threshold and a short quiet period. When programs that are not
 * the node's own (CPU hogs, one per CPU, started by this test beside the daemon, not under it)
 * keep the machine busy, the node yields within 2 s: the coordinator sees it not taking jobs
 * (owner_busy), its job in flight continues on another node (a second daemon, without
 * owner-first) and its client's stream goes on without an error, and new requests go to the
 * other node; once the hogs stop and the quiet period has passed, it takes jobs again.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { type NodeProcess, startNodeProcess } from "../nodeProcess.ts";
import { MODEL } from "../system.ts";

const joinToken = randomBytes(32).toString("base64url");
const QUIET_S = 2;

let coordinator: Coordinator;
let database: TestDatabase;
let apiKey: string;
let daemon: NodeProcess;
let nodeId: string;
/** the other node, which takes the yielded job over; started paused so that the job starts on the first */
let other: NodeProcess;
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
  // the other node first: its start keeps the CPUs busy, which the first would take for its owner's programs
  other = await startNodeProcess({ coordinatorUrl: coordinator.url, joinToken, args: ["--slots", "1", "--no-owner-first", "--paused"] });
  await waitFor("the other node online", () => coordinator.fleet.get(other.id) !== undefined, 30_000);
  daemon = await startNodeProcess({
    coordinatorUrl: coordinator.url,
    joinToken,
    args: [
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
  });
  nodeId = daemon.id;
  await waitFor("the node online and taking jobs", () => unit()?.accepting === true, 30_000);
}, 240_000);

/**
 * `sharedllm node pause|resume` for the other node, told as that command tells a daemon (the
 * command itself would be a program of the owner's, busy for a second while it starts).
 */
async function tellOther(command: "pause" | "resume"): Promise<void> {
  await other.tell(command);
  const accepting = command === "resume";
  await waitFor(`the other node ${command}d`, () => coordinator.fleet.get(other.id)?.accepting === accepting, 20_000);
}

afterAll(async () => {
  killHogs();
  await other?.cleanup();
  await daemon?.cleanup();
  await coordinator?.close();
  await database?.cleanup();
});

describe("owner-first", () => {
  it("yields within 2 s while others' programs keep the CPUs busy, its stream going on elsewhere, and comes back after the quiet period", async () => {
    const res = await chat({ max_tokens: 100, temperature: 0, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sharedllm-node")).toBe(nodeId);
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
    const { pid: engine } = await daemon.engine();
    process.kill(engine, "SIGSTOP");
    try {
      await tellOther("resume");
      for (let i = 0; i < cpus().length; i++)
        hogs.push(spawn(process.execPath, ["-e", "for (;;) {}"], { detached: true, stdio: "ignore" }));
      await waitFor("the coordinator to see the node yield", () => unit()?.unavailableReason === "owner_busy", 2_000, 20);
      expect(unit()?.accepting).toBe(false);
      // handed off for its owner: it continues on the other node, and its client sees no error
      await rest;
      expect(text).not.toContain('"error"');
      expect(text).toContain("data: [DONE]");
      const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
      expect(metrics).toMatch(/^sharedllm_continuations_total\{cause="owner"\} 1$/m);
      expect(metrics).toMatch(/^sharedllm_yields_total\{cause="owner_busy"\} 1$/m);
      // no new job while its owner is busy: they go to the other node
      const elsewhere = await chat();
      expect(elsewhere.status).toBe(200);
      expect(elsewhere.headers.get("x-sharedllm-node")).toBe(other.id);
      expect(unit()?.accepting).toBe(false);
    } finally {
      killHogs();
      process.kill(engine, "SIGCONT");
    }
    const quietFrom = Date.now();
    await tellOther("pause");
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
