import { randomBytes } from "node:crypto";
import { CLOSE_REFUSED, CONTROL_PATH, CONTROL_PROTOCOL_VERSION, REGISTER_PATH, registrationMessage } from "@sharedllm/protocol";
import { SITE_AUTH_WINDOW_MS, signSiteRequest } from "@sharedllm/protocol/node";
import { type TestDatabase, testDatabase, waitFor } from "@sharedllm/testkit";
import { pino } from "pino";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type Coordinator, startCoordinator } from "../coordinator.js";

const joinToken = randomBytes(32).toString("base64url");
let c: Coordinator;
let database: TestDatabase;
beforeAll(async () => {
  database = await testDatabase();
  c = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: pino({ level: "silent" }) });
});
afterAll(async () => {
  await c?.close();
  await database?.cleanup();
});

interface Signed {
  body: string;
  headers: Record<string, string>;
}

/** A registration as a node makes it, with knobs to get each part wrong. */
async function registration(
  o: { account?: PrivateKeyAccount; prover?: PrivateKeyAccount; token?: string; now?: number; nodeId?: string } = {},
): Promise<Signed> {
  const account = o.account ?? privateKeyToAccount(generatePrivateKey());
  const nodeId = (o.nodeId ?? account.address).toLowerCase();
  const now = o.now ?? Date.now();
  const nonce = randomBytes(16).toString("hex");
  const proof = await (o.prover ?? account).signMessage({ message: registrationMessage({ nodeId, timestamp: String(now), nonce }) });
  const body = JSON.stringify({ nodeId, proof });
  return { body, headers: signSiteRequest(o.token ?? joinToken, "POST", REGISTER_PATH, body, now, nonce) };
}

const send = (r: Signed) =>
  fetch(c.url + REGISTER_PATH, { method: "POST", headers: { "content-type": "application/json", ...r.headers }, body: r.body });

/** Rows that a registration writes, to prove a refused one wrote nothing. */
async function counts() {
  const n = (rows: { n: string | number | bigint }) => Number(rows.n);
  const nodes = n(
    await c.db
      .selectFrom("nodes")
      .select((eb) => eb.fn.countAll().as("n"))
      .executeTakeFirstOrThrow(),
  );
  const sessions = n(
    await c.db
      .selectFrom("node_sessions")
      .select((eb) => eb.fn.countAll().as("n"))
      .executeTakeFirstOrThrow(),
  );
  // only registrations: connects and disconnects of other tests are journalled asynchronously
  const registered = n(
    await c.db
      .selectFrom("events")
      .select((eb) => eb.fn.countAll().as("n"))
      .where("kind", "=", "node.registered")
      .executeTakeFirstOrThrow(),
  );
  return { nodes, sessions, registered };
}

function openControl(token: string): Promise<{ status?: number; ws?: WebSocket }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(c.url.replace("http", "ws") + CONTROL_PATH, { headers: { authorization: `Bearer ${token}` } });
    ws.once("open", () => resolve({ ws }));
    ws.once("unexpected-response", (_req, res) => resolve({ status: res.statusCode }));
  });
}

describe("node registration", () => {
  it("a node with the join token and its own key gets a session that opens the control channel", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    const res = await send(await registration({ account }));
    expect(res.status).toBe(201);
    const body = (await res.json()) as { nodeId: string; sessionToken: string };
    expect(body.nodeId).toBe(account.address.toLowerCase());
    const { ws } = await openControl(body.sessionToken);
    expect(ws).toBeDefined();
    const welcome = new Promise<{ type: string; nodeId: string }>((r) => ws?.once("message", (d) => r(JSON.parse(d.toString()))));
    ws?.send(
      JSON.stringify({
        type: "hello",
        protocol: CONTROL_PROTOCOL_VERSION,
        nodeId: account.address,
        engine: { tag: "t", variant: "cpu" },
        models: [],
        slots: 1,
      }),
    );
    expect(await welcome).toMatchObject({ type: "welcome", nodeId: account.address.toLowerCase() });
    ws?.close();
  });

  it.each([
    ["a wrong join token", () => registration({ token: "not-the-site-token" }), /wrong join token, or the request was altered/],
    ["an expired timestamp", () => registration({ now: Date.now() - SITE_AUTH_WINDOW_MS - 5_000 }), /more than 60 s off/],
    ["a timestamp from the future", () => registration({ now: Date.now() + SITE_AUTH_WINDOW_MS + 5_000 }), /more than 60 s off/],
    ["a proof by another key", () => registration({ prover: privateKeyToAccount(generatePrivateKey()) }), /not signed by the node's key/],
    [
      "a body changed after signing",
      async () => {
        const r = await registration();
        return { ...r, body: r.body.replace(/"nodeId":"0x[0-9a-f]+"/, `"nodeId":"${privateKeyToAccount(generatePrivateKey()).address}"`) };
      },
      /wrong join token, or the request was altered/,
    ],
    ["no signature headers", async () => ({ ...(await registration()), headers: {} }), /sign the request/],
  ])("%s is refused with 401 and changes nothing", async (_name, make, why) => {
    const before = await counts();
    const res = await send(await make());
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(why);
    expect(await counts()).toEqual(before);
  });

  it("a replayed registration is refused and changes nothing", async () => {
    const r = await registration();
    expect((await send(r)).status).toBe(201);
    const before = await counts();
    const again = await send(r);
    expect(again.status).toBe(401);
    expect(((await again.json()) as { error: { message: string } }).error.message).toMatch(/already used/);
    expect(await counts()).toEqual(before);
  });

  it("a registration replayed to the restarted coordinator is refused too: used nonces are kept in the database", async () => {
    const r = await registration();
    expect((await send(r)).status).toBe(201);
    await c.close();
    c = await startCoordinator({ host: "127.0.0.1", port: 0, ...database, joinToken, logger: pino({ level: "silent" }) });
    const before = await counts();
    const again = await send(r);
    expect(again.status).toBe(401);
    expect(((await again.json()) as { error: { message: string } }).error.message).toMatch(/already used/);
    expect(await counts()).toEqual(before);
  });

  it("the control channel refuses unknown sessions, and a session used for another node id", async () => {
    expect((await openControl("made-up")).status).toBe(401);
    const res = await send(await registration());
    const { sessionToken } = (await res.json()) as { sessionToken: string };
    const { ws } = await openControl(sessionToken);
    const closed = new Promise<number>((r) => ws?.once("close", (code) => r(code)));
    ws?.send(
      JSON.stringify({
        type: "hello",
        protocol: CONTROL_PROTOCOL_VERSION,
        nodeId: privateKeyToAccount(generatePrivateKey()).address,
        engine: { tag: "t", variant: "cpu" },
        models: [],
        slots: 1,
      }),
    );
    expect(await closed).toBe(CLOSE_REFUSED);
  });

  it("a node in the coordinator's process gets an in-process channel on the same terms", async () => {
    await expect(c.dialLocal("made-up")).rejects.toMatchObject({ name: "ChannelRefused", status: 401 });
    const account = privateKeyToAccount(generatePrivateKey());
    const { sessionToken } = (await (await send(await registration({ account }))).json()) as { sessionToken: string };
    const hello = (nodeId: string) =>
      JSON.stringify({
        type: "hello",
        protocol: CONTROL_PROTOCOL_VERSION,
        nodeId,
        engine: { tag: "t", variant: "cpu" },
        models: [],
        slots: 1,
      });

    const channel = await c.dialLocal(sessionToken);
    const welcome = new Promise<{ type: string; nodeId: string }>((r) => channel.onMessage((f) => r(JSON.parse(f))));
    channel.send(hello(account.address));
    expect(await welcome).toMatchObject({ type: "welcome", nodeId: account.address.toLowerCase() });
    expect(c.fleet.get(account.address.toLowerCase())).toBeDefined();
    const gone = new Promise<number>((r) => channel.onClose((code) => r(code)));
    channel.close(1000, "bye");
    expect(await gone).toBe(1000);
    await waitFor("the node to leave the fleet", () => c.fleet.get(account.address.toLowerCase()) === undefined, 5_000);

    // a session used for another node id is refused as on a WebSocket
    const other = await c.dialLocal(sessionToken);
    const refused = new Promise<[number, string]>((r) => other.onClose((code, reason) => r([code, reason])));
    other.send(hello(privateKeyToAccount(generatePrivateKey()).address));
    const [code, reason] = await refused;
    expect(code).toBe(CLOSE_REFUSED);
    expect(reason).toMatch(/this session belongs to node/);
    expect(other.open).toBe(false);
  });
});
