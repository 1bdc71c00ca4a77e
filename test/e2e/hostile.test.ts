/**
 * Hostile input on the coordinator's ports (docs/security.md, "Hostile input"), against a real
 * coordinator on real sockets: nodes that send malformed, oversized, early, duplicate or silent
 * control-channel frames, or frames for another node's jobs; HTTP clients that trickle their
 * headers or body (slowloris); a client that stops reading its stream. Each bad peer is refused
 * or dropped with a reason, while an honest client is still served within a deadline and the
 * process's memory stays within a stated bound.
 */
import { randomBytes } from "node:crypto";
import net from "node:net";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { registerNode } from "@sharedllm/node";
import { CLOSE_REFUSED, CONTROL_PATH, CONTROL_PROTOCOL_VERSION, encodeChunkFrame, type JobStart, MAX_SLOTS } from "@sharedllm/protocol";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { startTestChain, type TestChain } from "../chain.ts";
import { quietLogger, type TestDatabase, testDatabase, waitFor } from "../helpers.ts";
import { SimNode } from "../simNode.ts";

const joinToken = randomBytes(32).toString("base64url");
/** short, so that the deadlines are seen within the test: a hello is due within 3 heartbeats (1.5 s) */
const HEARTBEAT_MS = 500;
const TIMEOUTS = { headersMs: 1_000, requestMs: 2_000 };
/** an honest client's request must be answered within this while an attack runs */
const SERVED_WITHIN_MS = 2_000;

let coordinator: Coordinator;
let database: TestDatabase;
let apiKey: string;
let honest: SimNode;
const nodes: SimNode[] = [];
const sockets: { destroy(): void }[] = [];

beforeAll(async () => {
  database = await testDatabase();
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: quietLogger(),
    heartbeatIntervalMs: HEARTBEAT_MS,
    httpTimeouts: TIMEOUTS,
  });
  apiKey = (await createApiKey(coordinator.db, "hostile")).secret;
  honest = await simNode({});
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  for (const n of nodes) n.stop();
  await coordinator?.close();
  await database?.cleanup();
});

async function simNode(o: Omit<ConstructorParameters<typeof SimNode>[0], "coordinatorUrl" | "joinToken">): Promise<SimNode> {
  const n = new SimNode({ coordinatorUrl: coordinator.url, joinToken, ...o });
  nodes.push(n);
  await n.start();
  return n;
}

/** An honest streamed chat on the honest node's model: its latency, and whether it ran to its end. */
async function honestChat(): Promise<{ ms: number; ok: boolean }> {
  const started = performance.now();
  const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 8, stream: true }),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { ms: performance.now() - started, ok: res.status === 200 && text.endsWith("data: [DONE]\n\n") };
}

async function expectServed(): Promise<number> {
  const { ms, ok } = await honestChat();
  expect(ok).toBe(true);
  expect(ms).toBeLessThan(SERVED_WITHIN_MS);
  return ms;
}

/** A registered node's raw control channel: the socket, and how it was closed. */
async function rawChannel(): Promise<{ ws: WebSocket; nodeId: string; closed: Promise<{ code: number; reason: string }> }> {
  const account = privateKeyToAccount(generatePrivateKey());
  const { sessionToken } = await registerNode({ coordinatorUrl: coordinator.url, joinToken, account });
  const ws = new WebSocket(coordinator.url.replace(/^http/, "ws") + CONTROL_PATH, {
    headers: { authorization: `Bearer ${sessionToken}` },
    perMessageDeflate: false,
  });
  sockets.push({ destroy: () => ws.terminate() });
  ws.on("error", () => {});
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("close", reject);
  });
  return { ws, nodeId: account.address.toLowerCase(), closed };
}

const hello = (nodeId: string, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: "hello",
    protocol: CONTROL_PROTOCOL_VERSION,
    nodeId,
    engine: { tag: "sim", variant: "cpu" },
    models: [{ id: "sim-model", sha256: "0".repeat(64), contextSize: 2048 }],
    slots: 2,
    ...extra,
  });

/** Closes within `ms`, or fails saying it was held open. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still open after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe("the control channel, from a hostile node", () => {
  it("refuses malformed, early, oversized, duplicate and silent channels with a reason, and serves others meanwhile", async () => {
    const garbage = await rawChannel();
    garbage.ws.send("{not json");
    expect(await within(garbage.closed, 3_000, "a garbage channel")).toEqual({ code: CLOSE_REFUSED, reason: "frames must be JSON" });

    const early = await rawChannel();
    early.ws.send(JSON.stringify({ type: "job.end", jobId: "x", usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
    early.ws.send(encodeChunkFrame("x", "{}", [1]));
    expect(await within(early.closed, 3_000, "an early channel")).toEqual({ code: CLOSE_REFUSED, reason: "the first frame must be hello" });

    // one frame of 2 MiB: over the limit before any of it is parsed
    const oversized = await rawChannel();
    oversized.ws.send(JSON.stringify({ type: "heartbeat", pad: "x".repeat(2 * 1024 * 1024) }));
    expect((await within(oversized.closed, 3_000, "an oversized channel")).code).toBe(1009);

    // a second hello before the first is welcomed: refused, and the node is in the fleet at most once
    const twice = await rawChannel();
    twice.ws.send(hello(twice.nodeId));
    twice.ws.send(hello(twice.nodeId));
    expect(await within(twice.closed, 3_000, "a double hello")).toEqual({
      code: CLOSE_REFUSED,
      reason: "wait for welcome before sending more frames",
    });
    await waitFor("the refused node to leave the fleet", () => !coordinator.fleet.get(twice.nodeId), 3_000);

    // what the database cannot store (a NUL in the engine's name) ends that channel, not the coordinator
    const nul = await rawChannel();
    nul.ws.send(hello(nul.nodeId, { engine: { tag: "sim\u0000", variant: "cpu" } }));
    expect(await within(nul.closed, 3_000, "a NUL hello")).toMatchObject({
      code: CLOSE_REFUSED,
      reason: expect.stringContaining("could not take this hello"),
    });

    // a node claiming more slots than a coordinator takes (to draw 8 jobs per slot, and hold them): refused
    const greedy = await rawChannel();
    greedy.ws.send(hello(greedy.nodeId, { slots: MAX_SLOTS + 1 }));
    expect(await within(greedy.closed, 3_000, "a greedy hello")).toMatchObject({
      code: CLOSE_REFUSED,
      reason: expect.stringContaining("slots"),
    });
    expect(coordinator.fleet.get(greedy.nodeId)).toBeUndefined();

    // a session that never says hello is closed after 3 heartbeat periods
    const silent = await rawChannel();
    const opened = performance.now();
    expect(await within(silent.closed, 4_000, "a silent channel")).toEqual({ code: CLOSE_REFUSED, reason: "no hello within 1.5 s" });
    expect(performance.now() - opened).toBeGreaterThanOrEqual(1_400);

    // a flood of garbage frames: the first is answered, the rest are not even read
    const flood = await rawChannel();
    const errors: string[] = [];
    flood.ws.on("message", (d) => errors.push(d.toString()));
    for (let i = 0; i < 5_000; i++) flood.ws.send(`garbage ${i}`);
    const latency = await expectServed();
    expect((await within(flood.closed, 3_000, "a flooding channel")).code).toBe(CLOSE_REFUSED);
    expect(errors).toEqual([JSON.stringify({ type: "error", message: "frames must be JSON" })]);
    console.log(`control-channel attacks: honest chat during a 5,000-frame flood in ${latency.toFixed(0)} ms`);
    expect(coordinator.fleet.get(honest.id)).toBeDefined();
  });

  it("closes a node that sends the frames it writes to the database in a loop; the tables stay small", async () => {
    const looping = await rawChannel();
    looping.ws.send(hello(looping.nodeId));
    await waitFor("the looping node in the fleet", () => coordinator.fleet.get(looping.nodeId), 3_000);
    for (let i = 0; i < 2_000; i++) {
      looping.ws.send(JSON.stringify({ type: "availability", accepting: i % 2 === 1, reason: i % 2 ? "resumed" : "paused" }));
    }
    expect(await within(looping.closed, 3_000, "a looping channel")).toEqual({
      code: CLOSE_REFUSED,
      reason: "more than 60 availability and models frames in a minute",
    });
    const events = await waitFor("the events to be written", async () => {
      const rows = await coordinator.db.selectFrom("events").select("kind").where("node_id", "=", looping.nodeId).execute();
      return rows.some((r) => r.kind === "node.disconnected") ? rows : undefined;
    });
    expect(events.filter((r) => r.kind === "node.availability")).toHaveLength(60);
  });

  it("keeps one channel per node: each hello on a new connection closes the one before", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    const nodeId = account.address.toLowerCase();
    const { sessionToken } = await registerNode({ coordinatorUrl: coordinator.url, joinToken, account });
    const channels: { ws: WebSocket; closed: Promise<{ code: number; reason: string }> }[] = [];
    for (let i = 0; i < 20; i++) {
      const ws = new WebSocket(coordinator.url.replace(/^http/, "ws") + CONTROL_PATH, {
        headers: { authorization: `Bearer ${sessionToken}` },
        perMessageDeflate: false,
      });
      sockets.push({ destroy: () => ws.terminate() });
      ws.on("error", () => {});
      const closed = new Promise<{ code: number; reason: string }>((resolve) =>
        ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })),
      );
      await new Promise((resolve) => ws.once("open", resolve));
      ws.send(hello(nodeId));
      await new Promise((resolve) => ws.once("message", resolve));
      channels.push({ ws, closed });
    }
    const replaced = await within(Promise.all(channels.slice(0, -1).map((c) => c.closed)), 3_000, "a replaced channel");
    expect(new Set(replaced.map((r) => `${r.code} ${r.reason}`))).toEqual(
      new Set([`${CLOSE_REFUSED} replaced by a newer connection of this node`]),
    );
    expect(channels.at(-1)?.ws.readyState).toBe(WebSocket.OPEN);
    expect(coordinator.fleet.list().filter((n) => n.id === nodeId)).toHaveLength(1);
  });

  it("lets no node touch another node's job: chunks, ends and errors for it are ignored", async () => {
    let job: JobStart | undefined;
    let finish: () => void = () => {};
    const victim = await simNode({
      models: ["victim-model"],
      onJob: (j, send) => {
        job = j;
        send({
          type: "job.chunk",
          jobId: j.jobId,
          data: JSON.stringify({ choices: [{ index: 0, delta: { content: "honest " } }] }),
          tokens: [1],
        });
        finish = () => {
          send({
            type: "job.chunk",
            jobId: j.jobId,
            data: JSON.stringify({ choices: [{ index: 0, delta: { content: "words" } }] }),
            tokens: [2],
          });
          send({ type: "job.end", jobId: j.jobId, usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
        };
      },
    });
    const res = fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "victim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 8, stream: true }),
    }).then((r) => r.text());
    const jobId = (await waitFor("the victim's job", () => job)).jobId;
    const attacker = await rawChannel();
    attacker.ws.send(hello(attacker.nodeId));
    await waitFor("the attacker in the fleet", () => coordinator.fleet.get(attacker.nodeId), 3_000);
    const injected = JSON.stringify({ choices: [{ index: 0, delta: { content: "INJECTED" } }] });
    attacker.ws.send(encodeChunkFrame(jobId, injected, [9]));
    attacker.ws.send(JSON.stringify({ type: "job.prompt", jobId, promptTokens: 1_000_000 }));
    attacker.ws.send(JSON.stringify({ type: "job.error", jobId, message: "INJECTED", retryable: false }));
    attacker.ws.send(JSON.stringify({ type: "job.end", jobId, usage: { prompt_tokens: 1, completion_tokens: 99, total_tokens: 100 } }));
    // frames on one channel are read in order: once this is refused, the ones before it were read
    attacker.ws.send(hello(attacker.nodeId));
    expect(await attacker.closed).toEqual({ code: CLOSE_REFUSED, reason: "hello was already received" });
    finish();
    const text = await res;
    expect(text).toContain("honest ");
    expect(text).toContain("words");
    expect(text).not.toContain("INJECTED");
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    victim.stop();
  });

  it("stops a node that streams past its job's limit: the client gets an error event, the node a cancel", async () => {
    let cancelled = false;
    let sent = 0;
    const overrunning = await simNode({
      models: ["overrun-model"],
      onJob: (j, send) => {
        const more = () => {
          for (let k = 0; k < 50 && sent < 5_000 && !cancelled; k++) {
            sent += 1;
            send({
              type: "job.chunk",
              jobId: j.jobId,
              data: JSON.stringify({ choices: [{ index: 0, delta: { content: "z" } }] }),
              tokens: [sent],
            });
          }
          if (sent < 5_000 && !cancelled) setImmediate(more);
        };
        more();
      },
      onFrame: (f) => {
        if (f.type === "job.cancel") cancelled = true;
      },
    });
    const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "overrun-model", messages: [{ role: "user", content: "hi" }], max_tokens: 8, stream: true }),
    });
    const text = await res.text();
    expect(text).toContain("the node streamed more than the job allows");
    await waitFor("the overrunning node's cancel", () => cancelled, 3_000);
    // the events past the limit were not relayed: at most the limit, its margin and the slack
    expect(text.split("data: ").length).toBeLessThan(200);
    expect(sent).toBeLessThan(5_000);
    overrunning.stop();
  });
});

describe("slow HTTP clients (slowloris)", () => {
  it("cuts off clients that trickle their headers or body, keeps streams and nodes, and serves others meanwhile", async () => {
    const { port } = new URL(coordinator.url);
    const closes: Promise<number>[] = [];
    const trickle = (preamble: string, then: string) => {
      const s = net.connect(Number(port), "127.0.0.1");
      sockets.push(s);
      s.on("error", () => {});
      const opened = performance.now();
      closes.push(new Promise((resolve) => s.on("close", () => resolve(performance.now() - opened))));
      s.write(preamble);
      // the attack itself: one byte every 100 ms, for as long as the server keeps the socket
      const timer = setInterval(() => (s.writable ? s.write(then) : clearInterval(timer)), 100);
      s.on("close", () => clearInterval(timer));
    };
    for (let i = 0; i < 100; i++) trickle("GET /healthz HTTP/1.1\r\nHost: x\r\n", "x");
    const body = JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }] });
    for (let i = 0; i < 50; i++) {
      trickle(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\nContent-Type: application/json\r\nContent-Length: ${body.length * 100}\r\n\r\n${body}`,
        " ",
      );
    }
    // a legitimate stream that lasts longer than a request may take to arrive
    const slow = await simNode({
      models: ["slow-model"],
      onJob: (j, send) => {
        let i = 0;
        const timer = setInterval(() => {
          i += 1;
          send({
            type: "job.chunk",
            jobId: j.jobId,
            data: JSON.stringify({ choices: [{ index: 0, delta: { content: `${i} ` } }] }),
            tokens: [i],
          });
          if (i < 12) return;
          clearInterval(timer);
          send({ type: "job.end", jobId: j.jobId, usage: { prompt_tokens: 3, completion_tokens: 12, total_tokens: 15 } });
        }, 250);
      },
    });
    const started = performance.now();
    const stream = fetch(`${coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "slow-model", messages: [{ role: "user", content: "hi" }], max_tokens: 16, stream: true }),
    }).then((r) => r.text());
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) latencies.push(await expectServed());
    const held = await within(Promise.all(closes), 6_000, "a slowloris socket");
    // headers within 1 s, the whole request within 2 s, found by a check every 250 ms
    expect(Math.max(...held)).toBeLessThan(TIMEOUTS.requestMs + 1_000);
    const text = await stream;
    expect(performance.now() - started).toBeGreaterThan(TIMEOUTS.requestMs);
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
    // the honest node's WebSocket outlived the request timeouts
    expect(coordinator.fleet.get(honest.id)).toBeDefined();
    console.log(
      `slowloris: 150 sockets cut off after at most ${Math.max(...held).toFixed(0)} ms; honest chats took at most ${Math.max(...latencies).toFixed(0)} ms`,
    );
    slow.stop();
  });
});

describe("a client that stops reading its stream", () => {
  it("is dropped once its unsent bytes pass the bound, its job cancelled on the node; others are served meanwhile", async () => {
    const EVENTS = 40_000;
    let sent = 0;
    let cancelled: number | undefined;
    const word = "y".repeat(900);
    const flood = await simNode({
      served: [{ id: "flood-model", sha256: "1".repeat(64), contextSize: 65_536 }],
      models: ["flood-model"],
      onJob: (j, send) => {
        const more = () => {
          for (let k = 0; k < 200 && sent < EVENTS && cancelled === undefined; k++) {
            sent += 1;
            send({
              type: "job.chunk",
              jobId: j.jobId,
              data: JSON.stringify({ choices: [{ index: 0, delta: { content: word } }] }),
              tokens: [sent],
            });
          }
          if (sent < EVENTS && cancelled === undefined) setImmediate(more);
        };
        more();
      },
      onFrame: (f) => {
        if (f.type === "job.cancel") cancelled = sent;
      },
    });
    const before = process.memoryUsage().rss;
    const { port } = new URL(coordinator.url);
    const body = JSON.stringify({ model: "flood-model", messages: [{ role: "user", content: "hi" }], max_tokens: 60_000, stream: true });
    const client = net.connect(Number(port), "127.0.0.1");
    sockets.push(client);
    client.on("error", () => {});
    let received = 0;
    client.on("data", (d) => {
      received += d.length;
      // it read the headers and the first events, and then reads nothing more
      client.pause();
    });
    client.write(
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${apiKey}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    let peak = 0;
    const sample = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().rss - before);
    }, 20);
    try {
      await waitFor("the flooding node's job to be cancelled", () => cancelled !== undefined, 10_000, 20);
      const latency = await expectServed();
      const growth = peak / 2 ** 20;
      console.log(
        `never-reading client: cancelled after ${cancelled} of ${EVENTS} events (${(((cancelled ?? 0) * 950) / 2 ** 20).toFixed(1)} MiB), client read ${received} bytes; rss grew at most ${growth.toFixed(0)} MiB; honest chat in ${latency.toFixed(0)} ms`,
      );
      expect(cancelled).toBeLessThan(EVENTS / 2);
      // the test process holds the node, the coordinator and the client: without the bound it grew by the whole 36 MiB flood at least
      expect(growth).toBeLessThan(32);
    } finally {
      clearInterval(sample);
      flood.stop();
    }
  });
});

describe("federation routes, from a stranger", () => {
  let chain: TestChain;
  let site: Coordinator;
  let siteDb: TestDatabase;

  beforeAll(async () => {
    chain = await startTestChain();
    siteDb = await testDatabase();
    site = await startCoordinator({
      host: "127.0.0.1",
      port: 0,
      ...siteDb,
      joinToken,
      logger: quietLogger(),
      httpTimeouts: TIMEOUTS,
      federation: { rpcUrl: chain.rpcUrl, registry: chain.registry, privateKey: generatePrivateKey(), refreshMs: 1_000 },
    });
  });

  afterAll(async () => {
    await site?.close();
    await siteDb?.cleanup();
    await chain?.stop();
  });

  /** Headers announcing an 8 MiB body, and none of it: what comes back, and how soon. */
  function announce(headers: string): Promise<{ status: string; ms: number }> {
    const { port } = new URL(site.url);
    const s = net.connect(Number(port), "127.0.0.1");
    sockets.push(s);
    s.on("error", () => {});
    const started = performance.now();
    s.write(
      `POST /federation/v1/ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${8 * 1024 * 1024}\r\n${headers}\r\n`,
    );
    return new Promise((resolve) =>
      s.once("data", (d) => {
        resolve({ status: d.toString().split("\r\n")[0] ?? "", ms: performance.now() - started });
        s.destroy();
      }),
    );
  }

  it("refuses unsigned and strangers' requests from their headers, before reading their bodies", async () => {
    const stranger = privateKeyToAccount(generatePrivateKey()).address.toLowerCase();
    const replies = await Promise.all([
      ...Array.from({ length: 20 }, () => announce("")),
      ...Array.from({ length: 20 }, () =>
        announce(
          [
            `content-digest: sha-256=:${"A".repeat(43)}=:`,
            `sharedllm-origin: ${stranger}`,
            `sharedllm-destination: ${site.federation?.address}`,
            `signature-input: sllm=("@method" "@authority" "@path" "@query" "content-digest" "sharedllm-origin" "sharedllm-destination");created=${Math.floor(Date.now() / 1000)};expires=${Math.floor(Date.now() / 1000) + 30};nonce="${"n".repeat(24)}";keyid="1:1";alg="hmac-sha256";tag="sharedllm-federation"`,
            `signature: sllm=:${"A".repeat(43)}=:`,
            "",
          ].join("\r\n"),
        ),
      ),
    ]);
    // answered at once, not after the request timeout the unread bodies would have run into
    expect(new Set(replies.slice(0, 20).map((r) => r.status))).toEqual(new Set(["HTTP/1.1 401 Unauthorized"]));
    expect(new Set(replies.slice(20).map((r) => r.status))).toEqual(new Set(["HTTP/1.1 403 Forbidden"]));
    const slowest = Math.max(...replies.map((r) => r.ms));
    expect(slowest).toBeLessThan(TIMEOUTS.requestMs / 2);
    console.log(`federation: 40 unsigned or strangers' 8 MiB requests refused from their headers within ${slowest.toFixed(0)} ms`);
  });
});
