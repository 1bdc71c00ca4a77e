/**
 * An owner's say over a running node, end to end: a coordinator and a real `sharedllm node
 * start` daemon (llama-server on the default model), steered with `sharedllm node pause`,
 * `resume` and `leave` from another process, as an owner would. The coordinator learns each
 * change from the node's availability frame. A pause yields (the job in flight is handed off at
 * once); a leave drains (the job in flight finishes first).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { promisify } from "node:util";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { type NodeProcess, startNodeProcess } from "../nodeProcess.ts";
import { MODEL } from "../system.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");

let coordinator: Coordinator;
let database: TestDatabase;
let apiKey: string;
let daemon: NodeProcess;
let nodeId: string;

/** `sharedllm node <command>` for the daemon's home, as its owner would type it. */
async function owner(command: "pause" | "resume" | "leave"): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, [BIN, "node", command], {
    env: { ...process.env, SHAREDLLM_HOME: daemon.home },
  });
  return stdout;
}

/** Whether a streamed response ran to its end with no error event. */
const complete = (text: string) => text.endsWith("data: [DONE]\n\n") && !text.includes('"error"');

/** Starts a streamed chat; `firstChunk` resolves when output starts, `done` with the whole stream. */
function stream(maxTokens: number) {
  let first: () => void = () => {};
  const firstChunk = new Promise<void>((r) => {
    first = r;
  });
  const done = (async () => {
    const res = await chat({ max_tokens: maxTokens, temperature: 0, stream: true });
    expect(res.status).toBe(200);
    let text = "";
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      first();
      text += Buffer.from(chunk).toString();
    }
    return text;
  })();
  return { firstChunk, done };
}

function chat(extra: Record<string, unknown> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${coordinator.url}/v1/chat/completions`, {
    signal,
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "Count to one hundred." }], max_tokens: 4, ...extra }),
  });
}

const accepting = () => coordinator.fleet.get(nodeId)?.accepting;

/** How many requests wait their turn for a node with room, as /metrics says. */
async function waitingRequests(): Promise<number> {
  const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
  return Number(/^sharedllm_jobs_waiting (\d+)$/m.exec(metrics)?.[1]);
}

async function availabilityEvents(): Promise<{ accepting: boolean; reason: string }[]> {
  const rows = await coordinator.db
    .selectFrom("events")
    .select("data")
    .where("kind", "=", "node.availability")
    .where("node_id", "=", nodeId)
    .orderBy("at")
    .execute();
  return rows.map((r) => JSON.parse(r.data));
}

beforeAll(async () => {
  database = await testDatabase();
  // a request waits its turn longer than an owner's command takes to start on a loaded machine
  coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: quietLogger(), queueWaitMs: 60_000 });
  apiKey = (await createApiKey(coordinator.db, "owner")).secret;
  daemon = await startNodeProcess({ coordinatorUrl: coordinator.url, joinToken, args: ["--slots", "2", "--no-owner-first"] });
  nodeId = daemon.id;
  await waitFor("the node online and taking jobs", () => accepting() === true, 30_000);
}, 180_000);

afterAll(async () => {
  await daemon?.cleanup();
  await coordinator?.close();
  await database?.cleanup();
});

describe("node pause, resume and leave", () => {
  it("a paused node hands its job in flight off at once and gets no new jobs; a request waits its turn, and is served once it resumes", async () => {
    const running = stream(300);
    let endedAt = 0;
    const ended = running.done.then((text) => {
      endedAt = Date.now();
      return text;
    });
    await running.firstChunk;
    // the job stays in flight however long the owner's command takes to start: its llama-server
    // is frozen until the stream has ended
    const { pid: engine } = await daemon.engine();
    process.kill(engine, "SIGSTOP");
    let seenAt: number;
    let text: string;
    try {
      expect(await owner("pause")).toMatch(/^pause: sent to node daemon pid \d+/);
      await waitFor("the coordinator to see the node paused", () => accepting() === false);
      seenAt = Date.now();
      expect(coordinator.fleet.get(nodeId)?.unavailableReason).toBe("paused");
      // handed off for its owner; one unit only, so the job has nowhere to continue: once the
      // coordinator's wait for another unit (5 s) is over, its stream ends with an error event
      text = await ended;
    } finally {
      process.kill(engine, "SIGCONT");
    }
    expect(complete(text)).toBe(false);
    expect(text).toMatch(/"error".*could continue it/);
    expect(endedAt - seenAt).toBeLessThan(8_000);
    const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
    expect(metrics).toMatch(/^sharedllm_continuations_total\{cause="owner"\} 1$/m);
    const job = await waitFor("the job recorded as failed", () =>
      coordinator.db
        .selectFrom("jobs")
        .select(["status", "completion_tokens"])
        .where("node_id", "=", nodeId)
        .where("status", "!=", "running")
        .executeTakeFirst(),
    );
    // a failed job is charged nothing (its hold, with a ledger, is released)
    expect(job).toEqual({ status: "failed", completion_tokens: null });

    const waiting = chat();
    await waitFor("the request to wait its turn", async () => (await waitingRequests()) === 1);
    await owner("resume");
    const served = await waiting;
    expect(served.status).toBe(200);
    expect(accepting()).toBe(true);
    expect(await waitingRequests()).toBe(0);
    expect(served.headers.get("x-sharedllm-node")).toBe(nodeId);
    await waitFor("both changes recorded", async () => (await availabilityEvents()).length === 2);
    expect(await availabilityEvents()).toEqual([
      { accepting: false, reason: "paused", handOff: true },
      { accepting: true, reason: "resumed" },
    ]);
    expect(await (await fetch(`${coordinator.url}/metrics`)).text()).toMatch(/^sharedllm_yields_total\{cause="paused"\} 1$/m);
  }, 120_000);

  it("leave finishes the job in flight first, then the daemon exits and the coordinator forgets the node and its sessions", async () => {
    expect(await coordinator.db.selectFrom("node_sessions").select("node_id").where("node_id", "=", nodeId).execute()).not.toEqual([]);
    const running = stream(300);
    await running.firstChunk;
    // the job stays in flight however long the owner's command takes to start on a loaded
    // machine: its llama-server is frozen until the drain has been seen
    const { pid: engine } = await daemon.engine();
    process.kill(engine, "SIGSTOP");
    const leaving = owner("leave");
    const gone = new AbortController();
    let waiting: Promise<unknown> = Promise.resolve();
    try {
      await waitFor("the coordinator to see the node draining", () => accepting() === false);
      // no new job goes to a draining node: a request waits its turn
      waiting = chat({}, gone.signal).catch(() => undefined);
      await waitFor("the request to wait its turn", async () => (await waitingRequests()) === 1);
    } finally {
      process.kill(engine, "SIGCONT");
    }

    expect(complete(await running.done)).toBe(true);
    expect(await leaving).toMatch(/^leave: sent to node daemon pid \d+/);
    const exit = await daemon.exited;
    expect(exit.code).toBe(0);
    expect(exit.output).toContain("left the site\n");
    expect(exit.output).not.toContain("some jobs did not finish");

    await waitFor("the coordinator to forget the node", () => coordinator.fleet.get(nodeId) === undefined);
    await waitFor(
      "its sessions to be gone",
      async () => (await coordinator.db.selectFrom("node_sessions").select("node_id").where("node_id", "=", nodeId).execute()).length === 0,
    );
    await waitFor("the drain recorded", async () => (await availabilityEvents()).length === 3);
    expect((await availabilityEvents()).at(-1)).toEqual({ accepting: false, reason: "draining" });
    const left = await waitFor("the leave to be recorded", () =>
      coordinator.db.selectFrom("events").select("kind").where("kind", "=", "node.left").where("node_id", "=", nodeId).executeTakeFirst(),
    );
    expect(left.kind).toBe("node.left");
    // its client gives up: it waits no more
    expect(await waitingRequests()).toBe(1);
    gone.abort();
    await waiting;
    await waitFor("the request to leave the queue", async () => (await waitingRequests()) === 0);
  }, 120_000);
});
