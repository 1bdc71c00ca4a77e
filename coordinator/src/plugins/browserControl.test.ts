/**
 * A browser node on the control channel (docs/browser-node.md): its session token comes as a
 * WebSocket subprotocol, and whatever its hello claims, it serves only the models allowed for
 * browser nodes, alone (never an auditor, a cluster worker or head).
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CONTROL_PATH, CONTROL_PROTOCOL_VERSION, CONTROL_SUBPROTOCOL } from "@sharedllm/protocol";
import { type TestDatabase, testDatabase, waitFor } from "@sharedllm/testkit";
import { pino } from "pino";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type Coordinator, startCoordinator } from "../coordinator.js";
import { hashSecret } from "../credentials.js";

let c: Coordinator;
let database: TestDatabase;
let dir: string;
let allowed: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sharedllm-browser-control-"));
  const bytes = randomBytes(4096);
  allowed = createHash("sha256").update(bytes).digest("hex");
  await writeFile(join(dir, "tiny.gguf"), bytes);
  database = await testDatabase();
  c = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken: randomBytes(32).toString("base64url"),
    logger: pino({ level: "silent" }),
    browserNodes: { mode: "open", blobs: [{ id: "tiny", sha256: allowed, path: join(dir, "tiny.gguf"), sizeBytes: bytes.length }] },
  });
});
afterAll(async () => {
  await c?.close();
  await database?.cleanup();
  await rm(dir, { recursive: true, force: true });
});

/** A browser node's session, as registration leaves it (a delegation and a session token). */
async function browserSession(delegationMs = 3600_000): Promise<{ nodeId: string; token: string }> {
  const nodeId = privateKeyToAccount(generatePrivateKey()).address.toLowerCase();
  const token = randomBytes(32).toString("base64url");
  await c.db
    .insertInto("browser_delegations")
    .values({
      session_key: nodeId,
      wallet: privateKeyToAccount(generatePrivateKey()).address.toLowerCase(),
      coordinator: c.url,
      chain_id: 31337,
      expires_at: new Date(Date.now() + delegationMs),
      signature: "0x",
    })
    .execute();
  await c.db.insertInto("nodes").values({ id: nodeId, engine: "browser" }).execute();
  await c.db
    .insertInto("node_sessions")
    .values({ token_hash: hashSecret(token), node_id: nodeId, expires_at: new Date(Date.now() + 3600_000) })
    .execute();
  return { nodeId, token };
}

describe("a browser node's control channel", () => {
  it("opens with the token as a subprotocol; a hello claiming more gets a lone node with only the allowed model", async () => {
    const { nodeId, token } = await browserSession();
    const ws = new WebSocket(c.url.replace("http", "ws") + CONTROL_PATH, [CONTROL_SUBPROTOCOL, `bearer.${token}`]);
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    expect(ws.protocol).toBe(CONTROL_SUBPROTOCOL);
    const welcome = new Promise<{ type: string }>((r) => ws.once("message", (d) => r(JSON.parse(d.toString()))));
    ws.send(
      JSON.stringify({
        type: "hello",
        protocol: CONTROL_PROTOCOL_VERSION,
        nodeId,
        engine: { tag: "wllama", variant: "wasm" },
        models: [
          { id: "tiny", sha256: allowed, contextSize: 2048 },
          { id: "big", sha256: "ab".repeat(32), contextSize: 2048 },
          // the allowed small file under another model's name would take that model's jobs
          { id: "llama-70b", sha256: allowed, contextSize: 2048 },
        ],
        slots: 1,
        auditor: true,
        role: "head",
        tunnel: { port: 9999, tls: true, speed: 100 },
      }),
    );
    expect((await welcome).type).toBe("welcome");
    const node = await waitFor("the node", () => c.fleet.get(nodeId));
    expect([...node.models.keys()]).toEqual(["tiny"]);
    expect(node.auditor).toBe(false);
    expect(node.role).toBe("solo");
    expect(node.tunnel).toBeUndefined();
    // a models frame cannot add what the hello could not
    ws.send(JSON.stringify({ type: "models", models: [{ id: "big", sha256: "ab".repeat(32), contextSize: 2048 }] }));
    await waitFor("the models frame applied", () => (c.fleet.get(nodeId)?.models.size === 0 ? true : undefined));
    ws.close();
    await waitFor("the node gone", () => (c.fleet.get(nodeId) ? undefined : true));
  });

  it("ends a tab's channel when its wallet's delegation expires", async () => {
    const { nodeId, token } = await browserSession(1_500);
    const ws = new WebSocket(c.url.replace("http", "ws") + CONTROL_PATH, [CONTROL_SUBPROTOCOL, `bearer.${token}`]);
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    const closed = new Promise<number>((r) => ws.once("close", (code) => r(code)));
    ws.send(
      JSON.stringify({
        type: "hello",
        protocol: CONTROL_PROTOCOL_VERSION,
        nodeId,
        engine: { tag: "wllama", variant: "wasm" },
        models: [{ id: "tiny", sha256: allowed, contextSize: 2048 }],
        slots: 1,
      }),
    );
    await waitFor("the node", () => c.fleet.get(nodeId));
    expect(await closed).toBeGreaterThanOrEqual(4000);
    await waitFor("the node gone", () => (c.fleet.get(nodeId) ? undefined : true));
  });

  it("refuses a subprotocol token that is not a session", async () => {
    const ws = new WebSocket(c.url.replace("http", "ws") + CONTROL_PATH, [
      CONTROL_SUBPROTOCOL,
      `bearer.${randomBytes(32).toString("base64url")}`,
    ]);
    const status = await new Promise<number | undefined>((resolve) => {
      ws.once("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.once("open", () => resolve(undefined));
    });
    expect(status).toBe(401);
  });
});
