/**
 * The RPC tunnel (DESIGN.md section 5). llama.cpp's rpc-server has no authentication, so it
 * listens on 127.0.0.1 only and a worker exposes this tunnel instead. Before a single byte
 * reaches rpc-server, a connection must pass an HMAC-SHA256 challenge-response under a
 * per-cluster-session key (handed out over the control channel):
 *
 *   worker -> head  {"p":"sharedllm-tunnel/1","node":<worker>,"nonce":<sn>}
 *   head -> worker  {"session":<id>,"head":<head>,"nonce":<cn>,"mode":<m>,"mac":HMAC(key, client|id|head|worker|sn|cn|tls|m)}
 *   worker -> head  {"ok":true,"mac":HMAC(key, server|id|head|worker|sn|cn|tls|m)}
 *
 * Both nonces are fresh per connection, so a recorded handshake cannot be replayed; `tls` is the
 * TLS channel binding (exported keying material) when the link uses TLS, so a man in the middle
 * cannot splice two TLS sessions. Then the authenticated sockets go to the relay.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import net, { type Socket } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import type { Logger } from "pino";
import { type Relayed, relay } from "./relay.js";

export const TUNNEL_PROTOCOL = "sharedllm-tunnel/1";
const HANDSHAKE_TIMEOUT_MS = 5_000;
const MAX_LINE = 2_048;

export interface TunnelSession {
  id: string;
  /** 32 random bytes, hex */
  key: string;
  /** the node id of the head allowed to use it */
  head: string;
  /** unix ms */
  expiresAt: number;
}

export interface TunnelTls {
  key: string | Buffer;
  cert: string | Buffer;
}

function mac(key: string, role: "client" | "server", parts: string[]): string {
  return createHmac("sha256", Buffer.from(key, "hex"))
    .update([role, ...parts].join("|"))
    .digest("hex");
}

function sameMac(a: string, b: string): boolean {
  const x = Buffer.from(a, "hex");
  const y = Buffer.from(b, "hex");
  return x.length === 32 && y.length === 32 && timingSafeEqual(x, y);
}

function binding(socket: Socket): string {
  return socket instanceof tls.TLSSocket
    ? (socket as TLSSocket).exportKeyingMaterial(32, "sharedllm-tunnel", Buffer.alloc(0)).toString("hex")
    : "";
}

/** Reads one JSON line without consuming anything after it; the socket is left paused. */
function readLine(socket: Socket, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error("handshake timed out")), timeoutMs);
    const done = (err?: Error, value?: Record<string, unknown>) => {
      clearTimeout(timer);
      socket.off("readable", onReadable);
      socket.off("close", onClose);
      socket.off("error", onError);
      if (err) reject(err);
      else resolve(value as Record<string, unknown>);
    };
    const onClose = () => done(new Error("connection closed during the handshake"));
    const onError = (err: Error) => done(err);
    const onReadable = () => {
      for (;;) {
        const chunk = socket.read(1) as Buffer | null;
        if (chunk === null) return;
        if (chunk[0] === 0x0a) {
          try {
            const parsed = JSON.parse(buf.toString("utf8")) as unknown;
            if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
            return done(undefined, parsed as Record<string, unknown>);
          } catch {
            return done(new Error("malformed handshake"));
          }
        }
        buf = Buffer.concat([buf, chunk]);
        if (buf.length > MAX_LINE) return done(new Error("malformed handshake (too long)"));
      }
    };
    socket.on("readable", onReadable);
    socket.on("close", onClose);
    socket.on("error", onError);
    onReadable();
  });
}

export interface TunnelServerOptions {
  /** this worker's node id */
  nodeId: string;
  host: string;
  /** 0 picks a free port */
  port: number;
  /** where rpc-server listens on 127.0.0.1 */
  upstreamPort: number;
  relayBinary?: string;
  tls?: TunnelTls;
  logger: Logger;
}

export interface TunnelStats {
  accepted: number;
  refused: Record<string, number>;
  /** bytes from heads to rpc-server, and back */
  bytesIn: number;
  bytesOut: number;
}

/** The worker's end: authenticates each connection, then relays it to rpc-server. */
export class TunnelServer {
  private readonly sessions = new Map<string, TunnelSession>();
  private readonly seen = new Map<string, Set<string>>();
  private readonly relays = new Set<Relayed>();
  private server: net.Server | undefined;
  readonly stats: TunnelStats = { accepted: 0, refused: {}, bytesIn: 0, bytesOut: 0 };
  port = 0;

  constructor(private readonly o: TunnelServerOptions) {}

  /** Accepts connections under this session (replacing an earlier one of the same head). */
  addSession(s: TunnelSession): void {
    for (const [id, old] of this.sessions) if (old.head === s.head) this.endSession(id);
    this.sessions.set(s.id, s);
    this.seen.set(s.id, new Set());
  }

  endSession(id: string): void {
    this.sessions.delete(id);
    this.seen.delete(id);
  }

  /** Whether a head holds a live session here (receipts for its jobs may be signed). */
  servesHead(head: string): boolean {
    const now = Date.now();
    return [...this.sessions.values()].some((s) => s.head === head && s.expiresAt > now);
  }

  async listen(): Promise<number> {
    const onConnection = (socket: Socket) => void this.accept(socket);
    this.server = this.o.tls
      ? tls.createServer({ key: this.o.tls.key, cert: this.o.tls.cert, pauseOnConnect: true } as tls.TlsOptions, onConnection)
      : net.createServer({ pauseOnConnect: true }, onConnection);
    await new Promise<void>((resolve, reject) => {
      this.server?.once("error", reject);
      this.server?.listen(this.o.port, this.o.host, () => resolve());
    });
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    for (const r of this.relays) r.close();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private refuse(socket: Socket, reason: string) {
    this.stats.refused[reason] = (this.stats.refused[reason] ?? 0) + 1;
    this.o.logger.warn({ remote: socket.remoteAddress, reason }, "tunnel connection refused");
    socket.destroy();
  }

  private async accept(socket: Socket) {
    socket.on("error", () => {});
    // many small RPC round trips per token: Nagle's algorithm would hold each one back
    socket.setNoDelay(true);
    const serverNonce = randomBytes(16).toString("hex");
    socket.write(`${JSON.stringify({ p: TUNNEL_PROTOCOL, node: this.o.nodeId, nonce: serverNonce })}\n`);
    let hello: Record<string, unknown>;
    try {
      hello = await readLine(socket, HANDSHAKE_TIMEOUT_MS);
    } catch (err) {
      return this.refuse(socket, (err as Error).message.startsWith("malformed") ? "malformed" : "no handshake");
    }
    const { session: id, head, nonce, mac: theirs } = hello;
    if (
      typeof id !== "string" ||
      typeof head !== "string" ||
      typeof nonce !== "string" ||
      typeof theirs !== "string" ||
      !/^[0-9a-f]{32}$/.test(nonce)
    ) {
      return this.refuse(socket, "malformed");
    }
    const session = this.sessions.get(id);
    if (!session) return this.refuse(socket, "unknown session");
    if (session.expiresAt <= Date.now()) {
      this.endSession(id);
      return this.refuse(socket, "stale session");
    }
    if (session.head !== head) return this.refuse(socket, "wrong head");
    // "bench": the head measures the link's throughput; the bytes are counted, not relayed
    const bench = hello.mode === "bench";
    const parts = [id, head, this.o.nodeId, serverNonce, nonce, binding(socket), bench ? "bench" : "relay"];
    if (!sameMac(theirs, mac(session.key, "client", parts))) return this.refuse(socket, "wrong key");
    const seen = this.seen.get(id) as Set<string>;
    if (seen.has(nonce)) return this.refuse(socket, "replayed");
    // the head waits for our answer before sending anything: bytes already here break the protocol
    if (socket.readableLength > 0) return this.refuse(socket, "malformed");
    seen.add(nonce);
    if (bench) return this.sink(socket, mac(session.key, "server", parts));
    const upstream = net.connect({ host: "127.0.0.1", port: this.o.upstreamPort, noDelay: true });
    upstream.pause();
    try {
      await new Promise<void>((resolve, reject) => {
        upstream.once("connect", resolve);
        upstream.once("error", reject);
      });
    } catch (err) {
      this.o.logger.error({ err: (err as Error).message }, "rpc-server is not reachable");
      socket.destroy();
      return;
    }
    upstream.on("error", () => {});
    socket.write(`${JSON.stringify({ ok: true, mac: mac(session.key, "server", parts) })}\n`);
    this.stats.accepted += 1;
    this.o.logger.info({ head, session: id }, "tunnel connection accepted");
    // TLS bytes must be decrypted here; plain TCP goes to the relay process
    const r = relay(socket, upstream, this.o.tls ? undefined : this.o.relayBinary);
    this.relays.add(r);
    const moved = await r.done;
    this.relays.delete(r);
    this.stats.bytesIn += moved.aToB;
    this.stats.bytesOut += moved.bToA;
  }

  /** A link measurement: count what the head sends until it stops, then say how much arrived. */
  private sink(socket: Socket, serverMac: string) {
    let bytes = 0;
    socket.write(`${JSON.stringify({ ok: true, mac: serverMac })}\n`);
    socket.on("data", (d: Buffer) => {
      bytes += d.length;
      if (bytes > 256 * 2 ** 20) socket.destroy();
    });
    socket.once("end", () => socket.end(`${JSON.stringify({ bytes })}\n`));
    socket.resume();
  }
}

/** Throughput of the link to a worker: MiB/s of a few MiB sent through an authenticated tunnel. */
export async function measureThroughput(o: DialOptions, bytes = 4 * 2 ** 20): Promise<number> {
  const socket = await dialTunnel({ ...o, mode: "bench" });
  try {
    const t0 = performance.now();
    const chunk = Buffer.alloc(256 * 1024);
    for (let sent = 0; sent < bytes; sent += chunk.length) {
      if (!socket.write(chunk)) await new Promise((r) => socket.once("drain", r));
    }
    socket.end();
    const answer = await readLine(socket, 30_000);
    const ms = performance.now() - t0;
    if (answer.bytes !== bytes) throw new Error(`the worker counted ${String(answer.bytes)} of ${bytes} bytes`);
    return bytes / 2 ** 20 / (ms / 1000);
  } finally {
    socket.destroy();
  }
}

export interface DialOptions {
  host: string;
  port: number;
  session: Pick<TunnelSession, "id" | "key">;
  headId: string;
  /** the worker's node id this head expects behind the address */
  workerId: string;
  /** TLS on the link; the server's certificate is not checked (the HMAC proves the peer) */
  tls?: boolean;
  /** relay (default): to rpc-server; bench: a throughput measurement */
  mode?: "relay" | "bench";
  timeoutMs?: number;
  /** told how long the TCP connect took: one round trip, answered by the worker's kernel, not its busy process */
  onConnected?: (ms: number) => void;
}

/** The head's end: an authenticated connection to a worker, paused, with nothing read past the handshake. */
export async function dialTunnel(o: DialOptions): Promise<Socket> {
  const socket: Socket = o.tls
    ? tls.connect({ host: o.host, port: o.port, rejectUnauthorized: false, noDelay: true } as tls.ConnectionOptions)
    : net.connect({ host: o.host, port: o.port, noDelay: true });
  socket.pause();
  const started = performance.now();
  socket.once("connect", () => o.onConnected?.(performance.now() - started));
  const timeout = o.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("connect timed out")), timeout);
      socket.once(o.tls ? "secureConnect" : "connect", () => {
        clearTimeout(t);
        resolve();
      });
      socket.once("error", (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
    const greeting = await readLine(socket, timeout);
    if (greeting.p !== TUNNEL_PROTOCOL) throw new Error(`not a ${TUNNEL_PROTOCOL} tunnel`);
    if (greeting.node !== o.workerId) throw new Error(`the tunnel belongs to ${String(greeting.node)}, not ${o.workerId}`);
    const nonce = randomBytes(16).toString("hex");
    const mode = o.mode ?? "relay";
    const parts = [o.session.id, o.headId, o.workerId, String(greeting.nonce), nonce, binding(socket), mode];
    socket.write(`${JSON.stringify({ session: o.session.id, head: o.headId, nonce, mode, mac: mac(o.session.key, "client", parts) })}\n`);
    const answer = await readLine(socket, timeout);
    if (answer.ok !== true || typeof answer.mac !== "string" || !sameMac(answer.mac, mac(o.session.key, "server", parts))) {
      throw new Error("the worker did not prove it holds the session key");
    }
    return socket;
  } catch (err) {
    socket.destroy();
    throw new Error(`tunnel to ${o.workerId} at ${o.host}:${o.port}: ${(err as Error).message}`);
  }
}

/**
 * A local endpoint for one cluster member: llama-server connects to 127.0.0.1:port as if it
 * were the member's rpc-server; each connection is tunnelled to the member and relayed.
 */
export class TunnelProxy {
  private server: net.Server | undefined;
  private readonly relays = new Set<Relayed>();
  port = 0;

  constructor(
    private readonly dial: DialOptions,
    private readonly relayBinary: string | undefined,
    private readonly logger: Logger,
    /** told when a connection to the member breaks or cannot be made */
    private readonly onBroken: (err: Error) => void = () => {},
  ) {}

  async listen(): Promise<number> {
    this.server = net.createServer({ pauseOnConnect: true, noDelay: true }, (local) => void this.forward(local));
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    for (const r of this.relays) r.close();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private async forward(local: Socket) {
    local.on("error", () => {});
    let remote: Socket;
    try {
      remote = await dialTunnel(this.dial);
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, "cannot reach a cluster member");
      local.destroy();
      this.onBroken(err as Error);
      return;
    }
    remote.on("error", () => {});
    const r = relay(local, remote, this.dial.tls ? undefined : this.relayBinary);
    this.relays.add(r);
    await r.done;
    this.relays.delete(r);
  }
}
