/**
 * The tunnel in front of a real rpc-server: authenticated connections get through (plain and
 * TLS); unauthenticated, wrongly keyed, replayed, unknown and stale ones are dropped before
 * rpc-server sees them, which rpc-server's own log confirms.
 */
import { execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, tempPaths, waitFor } from "../../../test/helpers.ts";
import { findEngine } from "../engine/build.js";
import { relayBinary } from "./relay.js";
import { type RpcServer, startRpcServer } from "./rpcServer.js";
import { measureThroughput, TUNNEL_PROTOCOL, TunnelProxy, TunnelServer, type TunnelSession } from "./tunnel.js";

const WORKER = "0x00000000000000000000000000000000000000aa";
const HEAD = "0x00000000000000000000000000000000000000bb";

let paths: Awaited<ReturnType<typeof tempPaths>>;
let rpc: RpcServer;
let tunnel: TunnelServer;
let tlsTunnel: TunnelServer;
const session: TunnelSession = { id: "s1", key: randomBytes(32).toString("hex"), head: HEAD, expiresAt: Date.now() + 3_600_000 };

beforeAll(async () => {
  paths = await tempPaths("sharedllm-tunnel-");
  const engine = await findEngine(paths.cache);
  if (!engine) throw new Error("no engine build (the global setup builds it)");
  rpc = await startRpcServer({ engine, cache: paths.home, logDir: paths.home });
  const binary = await relayBinary(paths.cache);
  tunnel = new TunnelServer({
    nodeId: WORKER,
    host: "127.0.0.1",
    port: 0,
    upstreamPort: rpc.port,
    relayBinary: binary,
    logger: quietLogger(),
  });
  await tunnel.listen();
  tunnel.addSession(session);
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=worker"].concat([
      "-keyout",
      join(paths.home, "key.pem"),
      "-out",
      join(paths.home, "cert.pem"),
    ]),
    { stdio: "ignore" },
  );
  tlsTunnel = new TunnelServer({
    nodeId: WORKER,
    host: "127.0.0.1",
    port: 0,
    upstreamPort: rpc.port,
    tls: { key: readFileSync(join(paths.home, "key.pem")), cert: readFileSync(join(paths.home, "cert.pem")) },
    logger: quietLogger(),
  });
  await tlsTunnel.listen();
  tlsTunnel.addSession(session);
}, 60_000);

afterAll(async () => {
  await tunnel?.close();
  await tlsTunnel?.close();
  await rpc?.supervisor.stop();
  await paths?.cleanup();
});

/** Connects to the tunnel, reads the greeting, sends `reply(greeting)`, and says how it ended. */
function rawAttempt(
  reply: (greeting: { nonce: string; node: string }) => string | undefined,
): Promise<{ greeting: { nonce: string }; closed: boolean; answer: string }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port: tunnel.port });
    let buf = "";
    let greeting: { nonce: string; node: string } | undefined;
    s.on("data", (d) => {
      buf += d;
      if (!greeting && buf.includes("\n")) {
        greeting = JSON.parse(buf.slice(0, buf.indexOf("\n"))) as { nonce: string; node: string };
        buf = buf.slice(buf.indexOf("\n") + 1);
        const line = reply(greeting);
        if (line !== undefined) s.write(line);
      }
    });
    s.on("error", () => {});
    s.on("close", () => resolve({ greeting: greeting as { nonce: string }, closed: true, answer: buf }));
    setTimeout(() => {
      s.destroy();
    }, 1_500).unref();
  });
}

const clientLine = (key: string, serverNonce: string, nonce = randomBytes(16).toString("hex"), id = session.id) => {
  const mac = createHmac("sha256", Buffer.from(key, "hex"))
    .update(["client", id, HEAD, WORKER, serverNonce, nonce, "", "relay"].join("|"))
    .digest("hex");
  return `${JSON.stringify({ session: id, head: HEAD, nonce, mac })}\n`;
};

describe("the RPC tunnel", () => {
  it("lets a head with the session key through to rpc-server, plain and over TLS", async () => {
    const before = await rpc.acceptedConnections();
    for (const [server, tls] of [
      [tunnel, false],
      [tlsTunnel, true],
    ] as const) {
      const proxy = new TunnelProxy(
        { host: "127.0.0.1", port: server.port, session, headId: HEAD, workerId: WORKER, tls },
        await relayBinary(paths.cache),
        quietLogger(),
      );
      await proxy.listen();
      // what llama-server would do: connect to the local endpoint
      const local = net.connect({ host: "127.0.0.1", port: proxy.port });
      await new Promise((r) => local.once("connect", r));
      await waitFor(
        "rpc-server to accept the tunnelled connection",
        async () => (await rpc.acceptedConnections()) === before + (tls ? 2 : 1),
      );
      local.destroy();
      await proxy.close();
    }
    expect(tunnel.stats.accepted + tlsTunnel.stats.accepted).toBe(2);
  });

  it("drops unauthenticated, wrongly keyed, replayed, unknown and stale connections before rpc-server sees them", async () => {
    const before = await rpc.acceptedConnections();
    const refusedBefore = { ...tunnel.stats.refused };
    // no handshake at all, garbage, a wrong key, an unknown session
    expect((await rawAttempt(() => undefined)).answer).toBe("");
    expect((await rawAttempt(() => "GET / HTTP/1.1\r\n\r\n\n")).closed).toBe(true);
    expect((await rawAttempt((g) => clientLine(randomBytes(32).toString("hex"), g.nonce))).answer).toBe("");
    expect((await rawAttempt((g) => clientLine(session.key, g.nonce, undefined, "no-such-session"))).answer).toBe("");
    // a valid handshake, recorded, and played again on a new connection
    let recorded = "";
    const valid = await rawAttempt((g) => {
      recorded = clientLine(session.key, g.nonce);
      return recorded;
    });
    expect(valid.answer).toContain('"ok":true');
    await waitFor("the valid connection", async () => (await rpc.acceptedConnections()) === before + 1);
    expect((await rawAttempt(() => recorded)).answer).toBe("");
    // a session past its expiry
    tunnel.addSession({ ...session, id: "old", head: "0x00000000000000000000000000000000000000cc", expiresAt: Date.now() - 1 });
    expect((await rawAttempt((g) => clientLine(session.key, g.nonce, undefined, "old"))).answer).toBe("");

    const refused = Object.fromEntries(Object.entries(tunnel.stats.refused).map(([k, v]) => [k, v - (refusedBefore[k] ?? 0)]));
    expect(refused).toMatchObject({ "no handshake": 1, malformed: 1, "wrong key": 2, "unknown session": 1, "stale session": 1 });
    // rpc-server saw only the one valid connection
    expect(await rpc.acceptedConnections()).toBe(before + 1);
  });

  it("measures a link's throughput through an authenticated tunnel without touching rpc-server", async () => {
    const before = await rpc.acceptedConnections();
    const mibps = await measureThroughput({ host: "127.0.0.1", port: tunnel.port, session, headId: HEAD, workerId: WORKER }, 2 * 2 ** 20);
    expect(mibps).toBeGreaterThan(1);
    expect(await rpc.acceptedConnections()).toBe(before);
  });

  it("greets with its protocol and node id", async () => {
    const { greeting } = await rawAttempt(() => undefined);
    expect(greeting).toMatchObject({ p: TUNNEL_PROTOCOL, node: WORKER });
  });
});
