/**
 * The tunnel against a LAN attacker. Behind it sits a recording TCP server in rpc-server's place,
 * so every byte that would reach rpc-server is seen. The named head gets through, its bytes
 * encrypted on the wire; a connection without TLS, without a certificate, signed by another key,
 * from a head the session does not name or the worker's policy does not serve, on a stale session,
 * or replaying a real head's signed handshake gets nothing through; bytes injected or altered
 * mid-stream end the connection before they reach the upstream.
 */
import { spawn } from "node:child_process";
import net, { type Socket } from "node:net";
import tls from "node:tls";
import { quietLogger, waitFor } from "@sharedllm/testkit";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compute, hello, request, setTensor } from "./rpcRequests.fixture.js";
import {
  bindingMessage,
  dialTunnel,
  type LayersSeen,
  MAX_SESSION_MS,
  measureThroughput,
  TUNNEL_PROTOCOL,
  TunnelProxy,
  TunnelServer,
  tunnelIdentity,
} from "./tunnel.js";

const worker = privateKeyToAccount(generatePrivateKey());
const head = privateKeyToAccount(generatePrivateKey());
const stranger = privateKeyToAccount(generatePrivateKey());
const banned = privateKeyToAccount(generatePrivateKey());
const WORKER = worker.address.toLowerCase();
const HEAD = head.address.toLowerCase();

/** rpc-server's stand-in: keeps every byte any connection sent it, and echoes it back */
let upstream: net.Server;
let received = Buffer.alloc(0);
let upstreamConnections = 0;
let upstreamClosed = 0;
let tunnel: TunnelServer;
const headIdentity = tunnelIdentity(head);
const workerIdentity = tunnelIdentity(worker);
const dial = () => ({ host: "127.0.0.1", port: tunnel.port, sessionId: "s1", identity: headIdentity, workerId: WORKER });

beforeAll(async () => {
  upstream = net.createServer((s) => {
    upstreamConnections++;
    s.on("close", () => upstreamClosed++);
    s.on("data", (d) => {
      received = Buffer.concat([received, d]);
      s.write(d);
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
  tunnel = new TunnelServer({
    identity: workerIdentity,
    host: "127.0.0.1",
    port: 0,
    upstream: { host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port },
    allowHead: (h) => h !== banned.address.toLowerCase(),
    logger: quietLogger(),
  });
  await tunnel.listen();
  expect(tunnel.addSession({ id: "s1", head: HEAD, expiresAt: Date.now() + 3_600_000 })).toBe(true);
});

afterAll(async () => {
  await tunnel?.close();
  await new Promise((r) => upstream?.close(r));
});

/** Sends `bytes` on a connection and resolves with what came back before it closed (or 1.5 s passed). */
function exchange(socket: Socket, bytes?: Buffer | string): Promise<string> {
  return new Promise((resolve) => {
    let answer = "";
    socket.on("data", (d) => {
      answer += d;
    });
    socket.on("error", () => {});
    socket.on("close", () => resolve(answer));
    socket.resume();
    if (bytes !== undefined) socket.write(bytes);
    setTimeout(() => socket.destroy(), 1_500).unref();
  });
}

/** A TLS connection with a certificate of its own, as an attacker on the LAN can make. */
async function attackerTls(): Promise<tls.TLSSocket & { fingerprint: string }> {
  const { cert } = tunnelIdentity(stranger);
  const s = tls.connect({ host: "127.0.0.1", port: tunnel.port, key: cert.key, cert: cert.cert, rejectUnauthorized: false });
  s.on("error", () => {});
  await new Promise((r) => s.once("secureConnect", r));
  return Object.assign(s, { fingerprint: cert.fingerprint });
}

/** The handshake line of a head, signed by `by` over this very connection. */
async function signedLine(s: tls.TLSSocket & { fingerprint: string }, by: typeof head, claimed = by.address.toLowerCase(), session = "s1") {
  const facts = {
    cert: s.fingerprint,
    peer: workerIdentity.cert.fingerprint,
    exporter: s.exportKeyingMaterial(32, "EXPORTER-sharedllm-tunnel", Buffer.alloc(0)).toString("hex"),
  };
  const message = bindingMessage({ role: "head", session, head: claimed, worker: WORKER, mode: "relay", ...facts });
  return `${JSON.stringify({ p: TUNNEL_PROTOCOL, session, head: claimed, mode: "relay", sig: await by.signMessage({ message }) })}\n`;
}

describe("the RPC tunnel", () => {
  it("carries the named head's bytes to rpc-server, encrypted on the wire", async () => {
    received = Buffer.alloc(0);
    // a tap between head and worker sees only TLS records, never the RPC bytes
    let wire = Buffer.alloc(0);
    const tap = net.createServer((a) => {
      const b = net.connect(tunnel.port, "127.0.0.1");
      a.on("data", (d) => {
        wire = Buffer.concat([wire, d]);
      });
      a.pipe(b).pipe(a);
      a.on("error", () => b.destroy());
      b.on("error", () => a.destroy());
    });
    await new Promise<void>((r) => tap.listen(0, "127.0.0.1", r));
    const proxy = new TunnelProxy({ ...dial(), port: (tap.address() as net.AddressInfo).port }, quietLogger());
    await proxy.listen();
    // what llama-server does: connect to the local endpoint and speak RPC
    const local = net.connect(proxy.port, "127.0.0.1");
    const secret = "GGML-RPC-COMMAND-set_tensor";
    local.write(secret);
    let echoed = "";
    local.on("data", (d) => {
      echoed += d;
    });
    await waitFor("the bytes to reach rpc-server and come back", () => echoed === secret);
    expect(received.toString()).toBe(secret);
    expect(wire.includes(secret)).toBe(false);
    local.destroy();
    await proxy.close();
    await new Promise((r) => tap.close(r));
  });

  it("serves no connection that is not the named head's, and rpc-server sees none of its bytes", async () => {
    const before = upstreamConnections;
    received = Buffer.alloc(0);
    const refusedBefore = { ...tunnel.stats.refused };
    // plain TCP speaking the RPC protocol straight away
    expect(await exchange(net.connect(tunnel.port, "127.0.0.1"), "GGML-RPC-COMMAND\n")).toBe("");
    // TLS without a client certificate
    const noCert = tls.connect({ host: "127.0.0.1", port: tunnel.port, rejectUnauthorized: false });
    expect(await exchange(noCert, `${JSON.stringify({ p: TUNNEL_PROTOCOL, session: "s1", head: HEAD, mode: "relay" })}\n`)).toBe("");
    // TLS with a certificate, claiming to be the head, signed by another key
    let s = await attackerTls();
    expect(await exchange(s, await signedLine(s, stranger, HEAD))).toBe("");
    // a node that is not the named head, with its own valid signature
    s = await attackerTls();
    expect(await exchange(s, await signedLine(s, stranger))).toBe("");
    // a head the coordinator named but this worker's own policy does not serve
    expect(tunnel.addSession({ id: "s2", head: banned.address, expiresAt: Date.now() + 60_000 })).toBe(false);
    s = await attackerTls();
    expect(await exchange(s, await signedLine(s, banned, undefined, "s2"))).toBe("");
    // a session past its expiry
    tunnel.addSession({ id: "old", head: stranger.address, expiresAt: Date.now() - 1 });
    s = await attackerTls();
    expect(await exchange(s, await signedLine(s, stranger, undefined, "old"))).toBe("");
    // the real head's signed handshake, recorded off its own connection and replayed on the attacker's
    const real = await dialTunnel(dial());
    const replay = await signedLine(Object.assign(real, { fingerprint: headIdentity.cert.fingerprint }), head);
    real.destroy();
    s = await attackerTls();
    expect(await exchange(s, replay)).toBe("");

    const refused = Object.fromEntries(Object.entries(tunnel.stats.refused).map(([k, v]) => [k, v - (refusedBefore[k] ?? 0)]));
    expect(refused).toMatchObject({ "wrong key": 2, "wrong head": 1, "unknown session": 1, "stale session": 1 });
    expect((refused["tls handshake failed"] ?? 0) + (refused["no certificate"] ?? 0)).toBe(2);
    // the real head's dial (no relay bytes) and nothing else reached rpc-server
    expect(upstreamConnections - before).toBe(1);
    expect(received.length).toBe(0);
  });

  it("drops a flood of oversized, garbage and silent handshakes, and serves the named head meanwhile", async () => {
    received = Buffer.alloc(0);
    const before = upstreamConnections;
    const heap = process.memoryUsage().heapUsed;
    const closed: Promise<number>[] = [];
    const attack = (s: Socket, bytes?: Buffer | string) => {
      const opened = performance.now();
      s.on("error", () => {});
      closed.push(new Promise((r) => s.on("close", () => r(performance.now() - opened))));
      if (bytes !== undefined) s.write(bytes);
    };
    for (let i = 0; i < 10; i++) {
      // a handshake line of 1 MiB with no end
      attack(await attackerTls(), Buffer.alloc(1024 * 1024, 0x61));
      // a line that is not a JSON object
      attack(await attackerTls(), `${"[".repeat(1_000)}\n`);
      // not TLS at all: 1 MiB of bytes
      attack(net.connect(tunnel.port, "127.0.0.1"), Buffer.alloc(1024 * 1024, 0x16));
    }
    // connections that complete TLS and say nothing
    for (let i = 0; i < 5; i++) attack(await attackerTls());
    // the named head, during the flood
    const started = performance.now();
    const proxy = new TunnelProxy(dial(), quietLogger());
    await proxy.listen();
    const local = net.connect(proxy.port, "127.0.0.1");
    let echoed = "";
    local.on("data", (d) => {
      echoed += d;
    });
    local.write("GGML-RPC-DURING-FLOOD");
    await waitFor("the head's bytes to reach rpc-server and come back", () => echoed === "GGML-RPC-DURING-FLOOD", 2_000, 5);
    const headMs = performance.now() - started;
    const held = await Promise.all(closed);
    // the silent ones wait out the handshake timeout (5 s); the rest are refused at once
    expect(Math.max(...held)).toBeLessThan(7_000);
    expect(held.filter((ms) => ms < 2_000).length).toBeGreaterThanOrEqual(30);
    expect(received.toString()).toBe("GGML-RPC-DURING-FLOOD");
    expect(upstreamConnections - before).toBe(1);
    expect((process.memoryUsage().heapUsed - heap) / 2 ** 20).toBeLessThan(64);
    console.log(
      `tunnel flood: 35 hostile connections dropped (at most ${Math.max(...held).toFixed(0)} ms); the head served in ${headMs.toFixed(0)} ms`,
    );
    local.destroy();
    await proxy.close();
  });

  it("ends a connection whose bytes are injected or altered mid-stream before they reach rpc-server", async () => {
    for (const attack of ["inject", "alter"] as const) {
      received = Buffer.alloc(0);
      // a man in the middle that lets the handshake through, then tampers with what the head sends
      let tamper = false;
      let toWorker: Socket | undefined;
      const mitm = net.createServer((a) => {
        const b = net.connect(tunnel.port, "127.0.0.1");
        toWorker = b;
        a.on("data", (d: Buffer) => {
          if (tamper && attack === "alter") d[d.length - 1] = (d[d.length - 1] as number) ^ 1;
          b.write(d);
        });
        b.pipe(a);
        a.on("error", () => b.destroy());
        b.on("error", () => a.destroy());
        b.on("close", () => a.destroy());
      });
      await new Promise<void>((r) => mitm.listen(0, "127.0.0.1", r));
      const socket = await dialTunnel({ ...dial(), port: (mitm.address() as net.AddressInfo).port });
      socket.on("error", () => {});
      const closedBefore = upstreamClosed;
      socket.write("first");
      await waitFor("the first bytes", () => received.toString() === "first");
      tamper = true;
      if (attack === "inject") toWorker?.write(Buffer.from("\x17\x03\x03\x00\x05GGML!"));
      else socket.write("second");
      await waitFor(`the worker to drop the ${attack}ed connection to rpc-server`, () => upstreamClosed === closedBefore + 1);
      expect(received.toString()).toBe("first");
      socket.destroy();
      await new Promise((r) => mitm.close(r));
    }
  });

  it.skipIf(process.getuid?.() !== 0)(
    "serves the head's local endpoint to its own user only, not to another user of the machine",
    async () => {
      received = Buffer.alloc(0);
      const proxy = new TunnelProxy(dial(), quietLogger());
      await proxy.listen();
      // another local user (nobody) connects to the endpoint llama-server uses and speaks RPC
      const script = `const s = require("node:net").connect(${proxy.port}, "127.0.0.1", () => s.write("GGML-RPC-FROM-ANOTHER-USER")); s.on("close", () => process.exit(0)); s.on("error", () => process.exit(0));`;
      const other = spawn(process.execPath, ["-e", script], { uid: 65534, gid: 65534, stdio: "ignore" });
      const exited = new Promise((r) => other.once("exit", r));
      await waitFor("the other user's connection to be refused", () => proxy.refused === 1);
      await exited;
      expect(received.length).toBe(0);
      await proxy.close();
    },
  );

  it("keeps a session at most a day, and measures a link without touching rpc-server", async () => {
    tunnel.addSession({ id: "long", head: stranger.address, expiresAt: Date.now() + 10 * MAX_SESSION_MS });
    expect(tunnel.expiresAt("long")).toBeLessThanOrEqual(Date.now() + MAX_SESSION_MS);
    const before = upstreamConnections;
    const mibps = await measureThroughput(dial(), 2 * 2 ** 20);
    expect(mibps).toBeGreaterThan(1);
    expect(upstreamConnections).toBe(before);
  });

  it("a worker that stops taking work ends its sessions and connections; the head's endpoint reports the member lost", async () => {
    const lost: string[] = [];
    const proxy = new TunnelProxy(dial(), quietLogger(), (err) => lost.push(err.message));
    await proxy.listen();
    const relayed = async () => {
      const local = net.connect(proxy.port, "127.0.0.1");
      local.on("error", () => {});
      let echoed = "";
      local.on("data", (d) => {
        echoed += d;
      });
      local.write("ping");
      await waitFor("the bytes echoed through the tunnel", () => echoed === "ping");
      return local;
    };
    const local = await relayed();
    tunnel.endAll();
    await waitFor("the head's endpoint to see the member gone", () => lost.length === 1);
    expect(lost).toEqual(["the member closed the tunnel"]);
    await waitFor("llama-server's connection closed", () => local.destroyed);
    await expect(dialTunnel(dial())).rejects.toThrow();
    // the head closing its own endpoint (re-forming) is no loss
    expect(tunnel.addSession({ id: "s1", head: HEAD, expiresAt: Date.now() + 3_600_000 })).toBe(true);
    await relayed();
    await proxy.close();
    await new Promise((r) => setTimeout(r, 100));
    expect(lost).toHaveLength(1);
  });
});

describe("the worker's view of the head's RPC stream", () => {
  it("tells the layers a head set over a session's live connections as a compute begins, once per change", async () => {
    const seen: { layers: number[]; tensorBytes: number }[] = [];
    const watched = new TunnelServer({
      identity: workerIdentity,
      host: "127.0.0.1",
      port: 0,
      upstream: { host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port },
      onLayers: (s: LayersSeen) => {
        expect(s).toMatchObject({ sessionId: "s1", head: HEAD });
        seen.push({ layers: [...s.layers].sort((a, b) => a - b), tensorBytes: s.tensorBytes });
      },
      logger: quietLogger(),
    });
    await watched.listen();
    watched.addSession({ id: "s1", head: HEAD, expiresAt: Date.now() + 60_000 });
    /** a connection as llama-server's: each request goes through once the echo of the one before came back */
    const connect = async () => {
      const s = await dialTunnel({ ...dial(), port: watched.port });
      s.on("error", () => {});
      let echoed = 0;
      s.on("data", (d: Buffer) => {
        echoed += d.length;
      });
      s.resume();
      let sent = 0;
      return {
        socket: s,
        send: async (b: Buffer) => {
          s.write(b);
          sent += b.length;
          await waitFor("the request to pass the worker's tunnel end", () => echoed === sent);
        },
      };
    };
    const a = await connect();
    await a.send(Buffer.concat([hello(), setTensor("blk.0.attn_q.weight", 100), setTensor("blk.1.attn_q.weight", 50)]));
    expect(seen).toEqual([]);
    await a.send(compute());
    expect(seen).toEqual([{ layers: [0, 1], tensorBytes: 150 }]);
    // the next tokens' computes change nothing
    await a.send(Buffer.concat([setTensor("inp_embd", 10), compute(), compute()]));
    expect(seen).toHaveLength(1);
    // a second connection of the session adds its layers
    const b = await connect();
    await b.send(Buffer.concat([hello(), setTensor("blk.2.ffn_up.weight", 7), compute()]));
    expect(seen.at(-1)).toEqual({ layers: [0, 1, 2], tensorBytes: 157 });
    // once it is gone, the next compute tells the layers of the connections left
    b.socket.destroy();
    await waitFor("the worker to see the second connection gone and tell the layers left", async () => {
      await a.send(compute());
      return seen.length === 3;
    });
    expect(seen.at(-1)).toEqual({ layers: [0, 1], tensorBytes: 150 });
    await watched.close();
  });

  it("ends a connection whose RPC stream it cannot follow, before rpc-server sees those bytes", async () => {
    const watched = new TunnelServer({
      identity: workerIdentity,
      host: "127.0.0.1",
      port: 0,
      upstream: { host: "127.0.0.1", port: (upstream.address() as net.AddressInfo).port },
      onLayers: () => {},
      logger: quietLogger(),
    });
    await watched.listen();
    watched.addSession({ id: "s1", head: HEAD, expiresAt: Date.now() + 60_000 });
    for (const garbage of [Buffer.from("not ggml-rpc at all"), Buffer.concat([hello(), request(200, Buffer.from("MARK"))])]) {
      received = Buffer.alloc(0);
      const closedBefore = upstreamClosed;
      const s = await dialTunnel({ ...dial(), port: watched.port });
      s.on("error", () => {});
      s.resume();
      s.write(garbage);
      await waitFor("the worker to drop the connection", () => upstreamClosed === closedBefore + 1);
      expect(received.length).toBe(0);
      s.destroy();
    }
    await watched.close();
  });
});
