/**
 * The RPC tunnel (docs/architecture.md, "LAN cluster"; docs/security/cluster.md). llama.cpp's
 * rpc-server has no authentication, so it listens only on a private Unix socket and a worker
 * exposes this tunnel instead. Every connection is TLS 1.3 with a certificate on both ends: each end makes an
 * ephemeral Ed25519 certificate (tunnelCert.ts) and ties it to its node key (its secp256k1
 * Ethereum key) with an EIP-191 signature over
 *
 *   sharedllm-tunnel/2 <role> session <id> head <head> worker <worker> mode <m>
 *   cert <own certificate's sha256> peer <the other end's certificate's sha256> exporter <tls exporter>
 *
 * so each end pins the certificate the other proved in the TLS handshake to the node key that
 * signed it; the exporter (RFC 8446 section 7.5) makes each signature good for this connection only.
 *
 *   head -> worker  {"p":"sharedllm-tunnel/2","session":<id>,"head":<head>,"mode":<m>,"sig":<head's signature>}
 *   worker -> head  {"ok":true,"sig":<worker's signature>}
 *
 * The traffic keys come from TLS 1.3's ephemeral (EC)DHE exchange, fresh for every connection;
 * nobody else (the coordinator included) ever holds one. Every byte after the handshake is
 * encrypted and authenticated by TLS, so bytes injected or altered on the path end the connection
 * before rpc-server sees them. A worker serves a head only while the coordinator's formation names
 * it (a session, capped at a day) and its own policy allows it (`allowHead`). The worker's end
 * reads the head's RPC stream as it passes (rpcWatch.ts) and tells which layers the head placed on
 * this worker (`onLayers`), for the worker to report them to the coordinator.
 */
import net, { type Socket } from "node:net";
import tls, { type TLSSocket } from "node:tls";
import type { Logger } from "pino";
import { type Hex, recoverMessageAddress } from "viem";
import { SharedLLMError } from "../errors.js";
import { fromOwnUser } from "./localPeer.js";
import { type Relayed, relay } from "./relay.js";
import type { RpcAddress } from "./rpcServer.js";
import { RpcWatch } from "./rpcWatch.js";
import { certFingerprint, ephemeralCert, type TunnelCert } from "./tunnelCert.js";

export const TUNNEL_PROTOCOL = "sharedllm-tunnel/2";
/** The longest a worker keeps a session, whatever it is told. */
export const MAX_SESSION_MS = 24 * 3600_000;
const HANDSHAKE_TIMEOUT_MS = 5_000;
const MAX_LINE = 2_048;
const EXPORTER_LABEL = "EXPORTER-sharedllm-tunnel";

export interface TunnelSession {
  id: string;
  /** the node id of the head allowed to use it */
  head: string;
  /** unix ms */
  expiresAt: number;
}

/** A node key that signs (a viem account). */
export interface TunnelSigner {
  address: string;
  signMessage(args: { message: string }): Promise<Hex>;
}

/** One end of a tunnel: its node key and the ephemeral certificate it proves in TLS. */
export interface TunnelIdentity {
  signer: TunnelSigner;
  cert: TunnelCert;
}

export function tunnelIdentity(signer: TunnelSigner): TunnelIdentity {
  return { signer, cert: ephemeralCert() };
}

interface Binding {
  role: "head" | "worker";
  session: string;
  head: string;
  worker: string;
  mode: "relay" | "bench";
  cert: string;
  peer: string;
  exporter: string;
}

/** What an end signs to tie its certificate and this connection to its node key. */
export function bindingMessage(b: Binding): string {
  return [
    `${TUNNEL_PROTOCOL} ${b.role}`,
    `session ${b.session} head ${b.head.toLowerCase()} worker ${b.worker.toLowerCase()} mode ${b.mode}`,
    `cert ${b.cert} peer ${b.peer} exporter ${b.exporter}`,
  ].join("\n");
}

/** The certificate fingerprints and exporter of an established TLS connection, seen from this end. */
function connectionFacts(socket: TLSSocket, own: TunnelCert): { cert: string; peer: string; exporter: string } | undefined {
  const peer = socket.getPeerX509Certificate();
  if (!peer || socket.getProtocol() !== "TLSv1.3") return undefined;
  return {
    cert: own.fingerprint,
    peer: certFingerprint(peer),
    exporter: socket.exportKeyingMaterial(32, EXPORTER_LABEL, Buffer.alloc(0)).toString("hex"),
  };
}

async function signedBy(message: string, signature: unknown): Promise<string | undefined> {
  if (typeof signature !== "string" || !/^0x[0-9a-fA-F]{130}$/.test(signature)) return undefined;
  try {
    return (await recoverMessageAddress({ message, signature: signature as Hex })).toLowerCase();
  } catch {
    return undefined;
  }
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

/** TLS 1.3 only, a certificate demanded of the other end, checked by its node key's signature (not by a CA). */
const TLS_OPTIONS = {
  minVersion: "TLSv1.3",
  maxVersion: "TLSv1.3",
  rejectUnauthorized: false,
  // AES-128-GCM first: as safe for this use and the cheapest per record on CPUs with AES instructions
  ciphersuites: "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
} as const;

export interface TunnelServerOptions {
  /** this worker's node key */
  identity: TunnelIdentity;
  host: string;
  /** 0 picks a free port */
  port: number;
  /** where rpc-server listens (a private Unix socket in a worker) */
  upstream: RpcAddress;
  /** this worker's own policy: whether it lends itself to this head at all (default: any head the coordinator names) */
  allowHead?: (head: string) => boolean;
  /**
   * told, as a compute begins on a session's connection, the layers the head has set on this
   * worker over that session's live connections (read off the RPC stream, rpcWatch.ts), each
   * time they changed since last told; absent: the stream is not watched
   */
  onLayers?: (seen: LayersSeen) => void;
  logger: Logger;
}

/** What a head set on this worker in one session, as its tunnel end saw it. */
export interface LayersSeen {
  sessionId: string;
  head: string;
  layers: ReadonlySet<number>;
  /** bytes of those layers' weights (RpcWatch.tensorBytes) */
  tensorBytes: number;
}

/** A session's watched connections, and whether what they saw changed since it was last told. */
interface SessionWatch {
  watches: Set<RpcWatch>;
  changed: boolean;
  told: string;
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
  private readonly relays = new Set<Relayed>();
  private readonly watched = new Map<string, SessionWatch>();
  private server: tls.Server | undefined;
  readonly nodeId: string;
  readonly stats: TunnelStats = { accepted: 0, refused: {}, bytesIn: 0, bytesOut: 0 };
  port = 0;

  constructor(private readonly o: TunnelServerOptions) {
    this.nodeId = o.identity.signer.address.toLowerCase();
  }

  /**
   * Accepts connections of this head under this session (replacing an earlier one of the same
   * head), for at most a day; false when this worker's policy does not serve that head.
   */
  addSession(s: TunnelSession): boolean {
    const head = s.head.toLowerCase();
    if (this.o.allowHead && !this.o.allowHead(head)) return false;
    for (const [id, old] of this.sessions) if (old.head === head) this.endSession(id);
    this.sessions.set(s.id, { id: s.id, head, expiresAt: Math.min(s.expiresAt, Date.now() + MAX_SESSION_MS) });
    return true;
  }

  /** When a session ends here (unix ms), or undefined when there is none of that id. */
  expiresAt(id: string): number | undefined {
    return this.sessions.get(id)?.expiresAt;
  }

  endSession(id: string): void {
    this.sessions.delete(id);
  }

  /** Ends every session and drops every connection: heads must form their clusters again, without this worker for now. */
  endAll(): void {
    this.sessions.clear();
    for (const r of this.relays) r.close();
  }

  /** Whether a head holds a live session here (receipts for its jobs may be signed). */
  servesHead(head: string): boolean {
    const now = Date.now();
    return [...this.sessions.values()].some((s) => s.head === head.toLowerCase() && s.expiresAt > now);
  }

  async listen(): Promise<number> {
    const { cert } = this.o.identity;
    this.server = tls.createServer(
      // a connection that never completes its TLS handshake is dropped as soon as a silent head would be
      { ...TLS_OPTIONS, key: cert.key, cert: cert.cert, requestCert: true, handshakeTimeout: HANDSHAKE_TIMEOUT_MS },
      (socket) => void this.accept(socket),
    );
    // a failed TLS handshake (no certificate, garbage, a TLS version below 1.3) never reaches accept
    this.server.on("tlsClientError", (_err, socket) => this.count(socket, "tls handshake failed"));
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

  private count(socket: Socket, reason: string) {
    this.stats.refused[reason] = (this.stats.refused[reason] ?? 0) + 1;
    this.o.logger.warn({ remote: socket.remoteAddress, reason }, "tunnel connection refused");
  }

  private refuse(socket: Socket, reason: string) {
    this.count(socket, reason);
    socket.destroy();
  }

  private async accept(socket: TLSSocket) {
    socket.pause();
    socket.on("error", () => {});
    // many small RPC round trips per token: Nagle's algorithm would hold each one back
    socket.setNoDelay(true);
    const facts = connectionFacts(socket, this.o.identity.cert);
    if (!facts) return this.refuse(socket, "no certificate");
    let hello: Record<string, unknown>;
    try {
      hello = await readLine(socket, HANDSHAKE_TIMEOUT_MS);
    } catch (err) {
      return this.refuse(socket, (err as Error).message.startsWith("malformed") ? "malformed" : "no handshake");
    }
    const { p, session: id, head, mode } = hello;
    if (p !== TUNNEL_PROTOCOL || typeof id !== "string" || typeof head !== "string" || (mode !== "relay" && mode !== "bench")) {
      return this.refuse(socket, "malformed");
    }
    const session = this.sessions.get(id);
    if (!session) return this.refuse(socket, "unknown session");
    if (session.expiresAt <= Date.now()) {
      this.endSession(id);
      return this.refuse(socket, "stale session");
    }
    if (session.head !== head.toLowerCase()) return this.refuse(socket, "wrong head");
    if (this.o.allowHead && !this.o.allowHead(session.head)) return this.refuse(socket, "head not allowed");
    const binding = { session: id, head: session.head, worker: this.nodeId, mode } as const;
    // the head signed its own certificate (our peer) and ours, on this very connection
    const theirs = bindingMessage({ ...binding, role: "head", cert: facts.peer, peer: facts.cert, exporter: facts.exporter });
    if ((await signedBy(theirs, hello.sig)) !== session.head) return this.refuse(socket, "wrong key");
    // the head waits for our answer before sending anything: bytes already here break the protocol
    if (socket.readableLength > 0) return this.refuse(socket, "malformed");
    const ours = await this.o.identity.signer.signMessage({ message: bindingMessage({ ...binding, role: "worker", ...facts }) });
    if (mode === "bench") return this.sink(socket, ours);
    const upstream = net.connect({ ...this.o.upstream, noDelay: true });
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
    socket.write(`${JSON.stringify({ ok: true, sig: ours })}\n`);
    this.stats.accepted += 1;
    this.o.logger.info({ head, session: id }, "tunnel connection accepted");
    const watch = this.o.onLayers && this.watch(session);
    const r = relay(socket, upstream, watch?.push);
    this.relays.add(r);
    const moved = await r.done;
    this.relays.delete(r);
    watch?.end();
    this.stats.bytesIn += moved.aToB;
    this.stats.bytesOut += moved.bToA;
  }

  /**
   * Follows one connection's RPC stream from the head. A stream it cannot follow is one rpc-server
   * refuses too: the connection ends there, before those bytes reach rpc-server.
   */
  private watch(session: TunnelSession): { push: (chunk: Buffer) => boolean; end: () => void } {
    const entry = this.watched.get(session.id) ?? { watches: new Set<RpcWatch>(), changed: false, told: "" };
    this.watched.set(session.id, entry);
    const w = new RpcWatch({
      weights: () => {
        entry.changed = true;
      },
      compute: () => this.computing(session, entry),
    });
    entry.watches.add(w);
    return {
      push: (chunk) => {
        w.push(chunk);
        if (w.unreadable === undefined) return true;
        this.o.logger.warn(
          { head: session.head, session: session.id, reason: w.unreadable },
          "an RPC stream this worker cannot follow: dropped",
        );
        return false;
      },
      end: () => {
        entry.watches.delete(w);
        entry.changed = true;
        if (!entry.watches.size && this.watched.get(session.id) === entry) this.watched.delete(session.id);
      },
    };
  }

  /** A compute began: the session's layers over its live connections, when they changed since last told. */
  private computing(session: TunnelSession, s: SessionWatch) {
    if (!s.changed) return;
    s.changed = false;
    const layers = new Set<number>();
    let tensorBytes = 0;
    for (const w of s.watches) {
      for (const l of w.layers) layers.add(l);
      tensorBytes += w.tensorBytes;
    }
    const told = `${[...layers].sort((a, b) => a - b).join(",")} ${tensorBytes}`;
    if (!layers.size || told === s.told) return;
    s.told = told;
    this.o.onLayers?.({ sessionId: session.id, head: session.head, layers, tensorBytes });
  }

  /** A link measurement: count what the head sends until it stops, then say how much arrived. */
  private sink(socket: Socket, sig: Hex) {
    let bytes = 0;
    socket.write(`${JSON.stringify({ ok: true, sig })}\n`);
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
  /** the cluster session the coordinator formed */
  sessionId: string;
  /** this head's node key and certificate */
  identity: TunnelIdentity;
  /** the worker's node id this head expects behind the address: only its key's signature is taken */
  workerId: string;
  /** relay (default): to rpc-server; bench: a throughput measurement */
  mode?: "relay" | "bench";
  timeoutMs?: number;
  /** told how long the TCP connect took: one round trip, answered by the worker's kernel, not its busy process */
  onConnected?: (ms: number) => void;
}

/** The head's end: an authenticated connection to a worker, paused, with nothing read past the handshake. */
export async function dialTunnel(o: DialOptions): Promise<TLSSocket> {
  const { cert } = o.identity;
  const socket = tls.connect({ ...TLS_OPTIONS, host: o.host, port: o.port, key: cert.key, cert: cert.cert });
  socket.setNoDelay(true);
  socket.pause();
  const started = performance.now();
  socket.once("connect", () => o.onConnected?.(performance.now() - started));
  const timeout = o.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("connect timed out")), timeout);
      socket.once("secureConnect", () => {
        clearTimeout(t);
        resolve();
      });
      socket.once("error", (err) => {
        clearTimeout(t);
        reject(err);
      });
    });
    const facts = connectionFacts(socket, cert);
    if (!facts) throw new Error("the worker offered no certificate over TLS 1.3");
    const mode = o.mode ?? "relay";
    const head = o.identity.signer.address.toLowerCase();
    const binding = { session: o.sessionId, head, worker: o.workerId.toLowerCase(), mode } as const;
    const sig = await o.identity.signer.signMessage({ message: bindingMessage({ ...binding, role: "head", ...facts }) });
    socket.write(`${JSON.stringify({ p: TUNNEL_PROTOCOL, session: o.sessionId, head, mode, sig })}\n`);
    const answer = await readLine(socket, timeout);
    const theirs = bindingMessage({ ...binding, role: "worker", cert: facts.peer, peer: facts.cert, exporter: facts.exporter });
    if (answer.ok !== true || (await signedBy(theirs, answer.sig)) !== binding.worker) {
      throw new Error("the worker did not prove it holds its node key");
    }
    return socket;
  } catch (err) {
    socket.destroy();
    throw new SharedLLMError("cluster", `tunnel to ${o.workerId} at ${o.host}:${o.port}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A local endpoint for one cluster member: llama-server connects to 127.0.0.1:port as if it
 * were the member's rpc-server; each connection is tunnelled to the member and relayed. Only
 * connections from this process's own user are served (llama.cpp's `--rpc` cannot use a Unix
 * socket): another user of a shared machine gets nothing.
 */
export class TunnelProxy {
  private server: net.Server | undefined;
  private readonly relays = new Set<Relayed>();
  port = 0;

  constructor(
    private readonly dial: DialOptions,
    private readonly logger: Logger,
    /** told when a connection to the member cannot be made, or the member closes one */
    private readonly onBroken: (err: Error) => void = () => {},
  ) {}

  private closing = false;

  async listen(): Promise<number> {
    this.server = net.createServer({ pauseOnConnect: true, noDelay: true }, (local) => void this.forward(local));
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", () => resolve()));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this.port;
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const r of this.relays) r.close();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  /** local connections turned away: not from this process's user */
  refused = 0;

  private async forward(local: Socket) {
    local.on("error", () => {});
    if (!(await fromOwnUser(local))) {
      this.refused++;
      this.logger.warn({ port: local.remotePort }, "a local connection of another user to a cluster endpoint: refused");
      local.destroy();
      return;
    }
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
    // the member ended the connection (it stopped, or its owner took the machine back), not llama-server
    let localClosed = false;
    local.once("close", () => {
      localClosed = true;
    });
    remote.once("close", () => {
      if (!localClosed && !this.closing) this.onBroken(new Error("the member closed the tunnel"));
    });
    const r = relay(local, remote);
    this.relays.add(r);
    await r.done;
    this.relays.delete(r);
  }
}
