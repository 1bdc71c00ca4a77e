/**
 * A fleet on the real engine: a coordinator and three `sharedllm node start`
 * daemons, each with its own SHAREDLLM_HOME and llama-server on the default model.
 * One daemon is killed mid-run and comes back; the coordinator restarts while the
 * nodes are idle.
 */
import { randomBytes } from "node:crypto";
import { type Coordinator, createApiKey, NODE_HEADER, startCoordinator } from "@sharedllm/coordinator";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { type NodeProcess, reportNodeFailure, startNodeProcess } from "../nodeProcess.ts";
import { MODEL } from "../system.ts";

const joinToken = randomBytes(32).toString("base64url");

interface Daemon {
  home: string;
  running?: NodeProcess;
  nodeId?: string;
}

let coordinator: Coordinator;
let database: TestDatabase;
let apiKey: string;
const homes: Awaited<ReturnType<typeof tempPaths>>[] = [];
const daemons: Daemon[] = [];

async function startDaemon(d: Daemon): Promise<string> {
  d.running = await startNodeProcess({
    coordinatorUrl: coordinator.url,
    joinToken,
    home: d.home,
    args: ["--slots", "2", "--threads", "1", "--no-owner-first"],
  });
  d.nodeId = d.running.id;
  return d.running.id;
}

function killDaemon(d: Daemon): Promise<void> {
  return d.running?.kill() ?? Promise.resolve();
}

interface Outcome {
  node: string;
  ok: boolean;
  error?: string;
}

/** One streamed chat request; records the serving node and whether the stream finished. */
async function chat(maxTokens: number, onFirstChunk?: () => void): Promise<Outcome> {
  const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({
      model: MODEL,
      messages: [{ role: "user", content: "Count to ten." }],
      max_tokens: maxTokens,
      ignore_eos: true,
      stream: true,
    }),
  });
  const node = res.headers.get(NODE_HEADER) ?? "";
  if (res.status !== 200) return { node, ok: false, error: `HTTP ${res.status}` };
  let text = "";
  let first = true;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      if (first) {
        first = false;
        onFirstChunk?.();
      }
      text += Buffer.from(chunk).toString();
    }
  } catch (err) {
    return { node, ok: false, error: String(err) };
  }
  if (text.includes("data: [DONE]")) return { node, ok: true };
  return { node, ok: false, error: /"error"/.test(text) ? "error event" : "stream cut" };
}

beforeAll(async () => {
  database = await testDatabase();
  coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: quietLogger() });
  apiKey = (await createApiKey(coordinator.db, "fleet")).secret;
  for (let i = 0; i < 3; i++) {
    const h = await tempPaths(`fleet-node${i}-`);
    homes.push(h);
    daemons.push({ home: h.home });
  }
  await Promise.all(daemons.map(startDaemon));
  await waitFor("three nodes online", () => coordinator.fleet.size === 3, 60_000);
}, 180_000);

afterAll(async () => {
  await Promise.all(daemons.map(killDaemon));
  await coordinator?.close();
  await database?.cleanup();
  for (const h of homes) await h.cleanup();
});

afterEach((ctx) => {
  reportNodeFailure(
    ctx,
    daemons.map((d) => d.running),
  );
  if (ctx.task.result?.state === "fail") {
    const view = coordinator.fleet.list().map((n) => ({
      id: n.id,
      active: n.active,
      accepting: n.accepting,
      notLoaded: n.notLoaded && [...n.notLoaded],
      coolingUntil: n.coolingUntil,
      tps: n.tokensPerSecond,
    }));
    process.stderr.write(`fleet at failure: ${JSON.stringify(view)}\n`);
  }
});

describe("a fleet of three real nodes", () => {
  it("spreads 30 concurrent requests over all three; a killed node's jobs continue on the others; it comes back and gets work", async () => {
    const victim = daemons[0] as Daemon;
    let started = 0;
    let killed: Promise<void> | undefined;
    const outcomes = await Promise.all(
      Array.from({ length: 30 }, () =>
        chat(48, () => {
          // once the fleet is busy, kill one daemon (its llama-server dies with it)
          if (++started === 8) killed = killDaemon(victim);
        }),
      ),
    );
    await killed;
    const served = new Set(outcomes.map((o) => o.node));
    expect(served).toEqual(new Set(daemons.map((d) => d.nodeId)));
    // the killed node's streams went on elsewhere (docs/continuation.md): every request completed
    expect(outcomes.filter((o) => !o.ok)).toEqual([]);
    const metrics = await (await fetch(`${coordinator.url}/metrics`)).text();
    expect(Number(/^sharedllm_continuations_total\{cause="node_lost"\} (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThan(0);

    await waitFor("the killed node to leave the fleet", () => coordinator.fleet.size === 2);
    const after = await Promise.all(Array.from({ length: 6 }, () => chat(8)));
    expect(after.every((o) => o.ok && o.node !== victim.nodeId)).toBe(true);

    // the same home comes back as the same node and receives work again
    expect(await startDaemon(victim)).toBe(victim.nodeId);
    await waitFor("the node to rejoin", () => coordinator.fleet.size === 3, 60_000);
    const again = await Promise.all(Array.from({ length: 6 }, () => chat(8)));
    expect(again.every((o) => o.ok)).toBe(true);
    expect(again.some((o) => o.node === victim.nodeId)).toBe(true);

    const jobs = await coordinator.db.selectFrom("jobs").select("status").execute();
    expect(jobs.filter((j) => j.status !== "completed")).toEqual([]);
  }, 240_000);

  it("a coordinator restart while nodes are idle: they reconnect within 10 s and the registry is intact", async () => {
    const port = Number(new URL(coordinator.url).port);
    const before = (await coordinator.db.selectFrom("nodes").select("id").orderBy("id").execute()).map((r) => r.id);
    await coordinator.close();
    coordinator = await startCoordinator({ host: "127.0.0.1", port, ...database, joinToken, logger: quietLogger() });
    const restartedAt = Date.now();
    await waitFor("all three nodes to reconnect", () => coordinator.fleet.size === 3, 10_000);
    expect(Date.now() - restartedAt).toBeLessThan(10_000);
    const nodes = (await coordinator.db.selectFrom("nodes").select("id").orderBy("id").execute()).map((r) => r.id);
    expect(nodes).toEqual(before);
    expect(new Set(coordinator.fleet.list().map((n) => n.id))).toEqual(new Set(daemons.map((d) => d.nodeId)));
    const r = await chat(8);
    expect(r.ok).toBe(true);
  }, 60_000);
});
