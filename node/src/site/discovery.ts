/**
 * A daemon's LAN discovery: it announces itself every few seconds (multicast, plus broadcast
 * where multicast is dropped, plus unicast to the addresses of `--scan`) with beacons signed by
 * its node key, learns its site's peers from their signed beacons only (so a peer's id, address
 * and claims are its own), and keeps the fastest of recent probe/pong round trips to each, counting
 * only pongs from the address the peer's own beacons came from.
 */
import dgram from "node:dgram";
import { EventEmitter } from "node:events";
import {
  type Beacon,
  type BeaconFailure,
  type BeaconSigner,
  DISCOVERY_GROUP,
  DISCOVERY_PORT,
  NonceCache,
  openBeacon,
  sealBeacon,
  signBeacon,
} from "@sharedllm/protocol/node";
import type { Logger } from "pino";
import { SharedLLMError } from "../errors.js";

export interface Peer {
  nodeId: string;
  address: string;
  port: number;
  lastSeen: number;
  memoryBytes: number;
  role?: Beacon["role"];
  tunnelPort?: number;
  /** recent round trips, ms (newest last): each the fastest of one burst of probes */
  rtts: number[];
  /** the burst the newest sample belongs to */
  burst?: number;
}

export interface DiscoveryOptions {
  key: Buffer;
  /** this node's key: its beacons are signed with it, and it names the node */
  signer: BeaconSigner;
  /** what this node announces now */
  info: () => Pick<Beacon, "memoryBytes" | "role" | "tunnelPort">;
  /** UDP port to listen on and to announce to; default 47474 */
  port?: number;
  /** multicast group; null turns multicast off */
  group?: string | null;
  /** broadcast address for the fallback (e.g. 10.0.0.255); default none */
  broadcast?: string;
  /** host[:port] targets probed by unicast: `--scan` ranges, expanded */
  targets?: string[];
  /** interface address to bind and send multicast from; default all */
  bindAddress?: string;
  intervalMs?: number;
  logger: Logger;
}

/**
 * Round-trip samples kept per peer. The fastest of these is the link estimate: a round trip
 * measured between two event loops is the link's plus whatever delay the two machines' load
 * adds, never less, so the floor of recent samples is the link (on a virtual machine whose idle
 * processes wake slowly, the median of a near peer wandered from 2 to 8 ms with the load).
 */
const RTT_SAMPLES = 7;
/**
 * Probes per sample: a sample is the fastest of a burst. A busy CPU only ever adds to a round
 * trip measured between two event loops, so the fastest of three sees the link, not the load.
 */
const BURST = 3;
/** Scan targets beaconed per tick. */
const SCAN_SLICE = 64;
/** A peer not heard from for this long is gone. */
export const PEER_TIMEOUT_MS = 10_000;

export class Discovery extends EventEmitter<{ change: [] }> {
  private socket: dgram.Socket | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly nonces = new NonceCache();
  /** probe nonce -> when it was sent, in which burst */
  private readonly probes = new Map<string, { at: number; burst: number }>();
  private bursts = 0;
  private scanAt = 0;
  readonly peers = new Map<string, Peer>();
  readonly ignored: Record<BeaconFailure, number> = { malformed: 0, other_site: 0, expired: 0, bad_signature: 0, spoofed: 0, replayed: 0 };
  readonly nodeId: string;
  multicast = false;

  constructor(private readonly o: DiscoveryOptions) {
    super();
    this.nodeId = o.signer.address.toLowerCase();
  }

  get port(): number {
    return this.o.port ?? DISCOVERY_PORT;
  }

  async start(): Promise<void> {
    const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
    this.socket = socket;
    socket.on("message", (msg, rinfo) => this.onMessage(msg, rinfo));
    socket.on("error", (err) => this.o.logger.warn({ err: err.message }, "discovery socket error"));
    await new Promise<void>((resolve) => socket.bind(this.port, this.o.bindAddress, resolve));
    socket.setBroadcast(true);
    const group = this.o.group === undefined ? DISCOVERY_GROUP : this.o.group;
    if (group) {
      try {
        socket.addMembership(group, this.o.bindAddress);
        socket.setMulticastTTL(1);
        socket.setMulticastLoopback(true);
        this.multicast = true;
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message }, "multicast unavailable: beacons go by broadcast and --scan only");
      }
    }
    void this.tick();
    this.timer = setInterval(() => void this.tick(), this.o.intervalMs ?? 2_000);
  }

  stop(): void {
    clearInterval(this.timer);
    this.socket?.close();
    this.socket = undefined;
  }

  /** Peers heard recently, with the link's round trip (undefined until measured). */
  view(now = Date.now()): (Peer & { rttMs?: number })[] {
    return [...this.peers.values()]
      .filter((p) => now - p.lastSeen < PEER_TIMEOUT_MS)
      .map((p) => ({ ...p, rttMs: p.rtts.length ? Math.min(...p.rtts) : undefined }));
  }

  private send(packet: Buffer, address: string, port = this.port) {
    this.socket?.send(packet, port, address, () => {});
  }

  private beacon(): Promise<Buffer> {
    return signBeacon(this.o.key, this.o.signer, this.o.info());
  }

  private async tick() {
    const now = Date.now();
    for (const [id, p] of this.peers) {
      if (now - p.lastSeen > PEER_TIMEOUT_MS) {
        this.peers.delete(id);
        this.emit("change");
      }
    }
    const sentBefore = performance.now() - PEER_TIMEOUT_MS;
    for (const [nonce, p] of this.probes) if (p.at < sentBefore) this.probes.delete(nonce);
    // one burst of probes per known peer per tick, half a tick after the beacons, so a burst of
    // scan datagrams does not sit between a probe and the timing of its pong
    setTimeout(
      () => {
        const burst = ++this.bursts;
        for (const p of this.peers.values()) for (let i = 0; i < BURST; i++) this.probe(p.address, p.port, burst);
      },
      (this.o.intervalMs ?? 2_000) / 2,
    ).unref();
    const beacon = await this.beacon();
    const group = this.o.group === undefined ? DISCOVERY_GROUP : this.o.group;
    if (this.multicast && group) this.send(beacon, group);
    if (this.o.broadcast) this.send(beacon, this.o.broadcast);
    // a scan sweeps its range a slice per tick, skipping known peers: datagrams to absent hosts wait
    // for ARP in the socket's send buffer, and a whole /24 at once would crowd out the probes
    const targets = this.o.targets ?? [];
    const known = new Set([...this.peers.values()].map((p) => `${p.address}:${p.port}`));
    for (let i = 0; i < Math.min(SCAN_SLICE, targets.length); i++) {
      const t = targets[(this.scanAt + i) % targets.length] as string;
      const [host, port] = t.split(":");
      const target = `${host}:${port ?? this.port}`;
      if (!known.has(target)) this.send(beacon, host as string, port ? Number(port) : this.port);
    }
    this.scanAt = targets.length ? (this.scanAt + SCAN_SLICE) % targets.length : 0;
    // peers known by a scan hear no multicast: they get each beacon unicast, so their view of this
    // node's claims (memory, role, tunnel) stays as fresh as a multicast peer's
    if (!(this.multicast && group)) for (const p of this.peers.values()) this.send(beacon, p.address, p.port);
  }

  private probe(address: string, port: number, burst: number) {
    const packet = sealBeacon(this.o.key, { kind: "probe", node: this.nodeId });
    const nonce = (JSON.parse(packet.toString().split("\n")[0] as string) as Beacon).nonce;
    this.probes.set(nonce, { at: performance.now(), burst });
    this.send(packet, address, port);
  }

  private onMessage(msg: Buffer, rinfo: dgram.RemoteInfo) {
    // the clock first: checking the datagram must not count as part of the round trip
    const arrived = performance.now();
    const opened = openBeacon(this.o.key, msg, this.nonces);
    if (!opened.ok) {
      this.ignored[opened.reason] += 1;
      return;
    }
    const b = opened.beacon;
    if (b.node === this.nodeId) return;
    if (b.kind === "probe") {
      this.send(sealBeacon(this.o.key, { kind: "pong", node: this.nodeId, echo: b.nonce, ...this.o.info() }), rinfo.address, rinfo.port);
      return;
    }
    const known = this.peers.get(b.node);
    if (b.kind === "beacon") {
      // signed by the node it names: its address and claims are its own
      const peer: Peer = known ?? { nodeId: b.node, address: rinfo.address, port: rinfo.port, lastSeen: 0, memoryBytes: 0, rtts: [] };
      peer.address = rinfo.address;
      peer.port = rinfo.port;
      peer.lastSeen = Date.now();
      peer.memoryBytes = b.memoryBytes ?? peer.memoryBytes;
      peer.role = b.role ?? peer.role;
      peer.tunnelPort = b.tunnelPort ?? peer.tunnelPort;
      if (!known) {
        this.peers.set(b.node, peer);
        this.o.logger.info({ peer: b.node, address: rinfo.address }, "found a site peer");
        // a peer that found us by a unicast scan hears who we are straight back
        void this.beacon().then((packet) => this.send(packet, rinfo.address, rinfo.port));
        this.emit("change");
      }
      return;
    }
    // a pong times the link to a known peer, and only from where that peer's own beacons come
    if (!known || known.address !== rinfo.address || !b.echo) return;
    const sent = this.probes.get(b.echo);
    if (sent === undefined) return;
    this.probes.delete(b.echo);
    const rtt = arrived - sent.at;
    const peer = known;
    if (peer.burst !== undefined && sent.burst < peer.burst) return; // a straggler of an older burst
    if (peer.burst === sent.burst) {
      // another pong of the newest burst: the sample is the fastest
      const last = peer.rtts.length - 1;
      peer.rtts[last] = Math.min(peer.rtts[last] as number, rtt);
    } else {
      peer.burst = sent.burst;
      peer.rtts.push(rtt);
      if (peer.rtts.length > RTT_SAMPLES) peer.rtts.shift();
    }
    this.emit("change");
  }
}

/** The addresses of an IPv4 CIDR range (at most a /16), without network and broadcast addresses. */
export function expandCidr(cidr: string): string[] {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr.trim());
  if (!m) throw new SharedLLMError("config", `"${cidr}" is not an IPv4 range like 192.168.1.0/24`);
  const octets = m.slice(1, 5).map(Number);
  const bits = Number(m[5]);
  if (octets.some((o) => o > 255) || bits > 32) throw new SharedLLMError("config", `"${cidr}" is not an IPv4 range like 192.168.1.0/24`);
  if (bits < 16) throw new SharedLLMError("config", `${cidr} is too large to scan: use /16 or smaller`);
  const base = octets.reduce((a, o) => (a << 8) | o, 0) >>> 0;
  const size = 2 ** (32 - bits);
  const start = (base & ~(size - 1)) >>> 0;
  const out: string[] = [];
  for (let i = size > 2 ? 1 : 0; i < (size > 2 ? size - 1 : size); i++) {
    const a = (start + i) >>> 0;
    out.push([a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255].join("."));
  }
  return out;
}
