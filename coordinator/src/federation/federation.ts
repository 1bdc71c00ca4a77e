/**
 * This coordinator in the federation: its identity (the secp256k1 key registered in
 * FederationRegistry), the trust it reads from the registry every `refreshMs`, the pair keys it
 * derives, and signed calls both ways: `signedFetch` to a peer, `verify` of a peer's request.
 * A peer that stops being trusted (revoked, unendorsed, expired) is cut off at the next refresh:
 * its requests are refused from then on and `peer.untrusted` is emitted, for whatever runs on
 * its behalf (forwarded jobs) to stop. When the registry cannot be read for staleAfterMs, every
 * peer is cut off (fail closed) until a read succeeds again.
 */
import { EventEmitter } from "node:events";
import {
  type DistrustReason,
  type FederationPeer,
  type FederationReceipt,
  type FederationResponse,
  federationReceiptTypedData,
  type PeerCapacity,
  peerUrlProblem,
  type TrustPath,
} from "@sharedllm/protocol";
import type { Logger } from "pino";
import { type Address, createPublicClient, defineChain, type Hex, http, type PublicClient } from "viem";
import { type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import type { Db } from "../db/database.js";
import { chainErrorText, redactRpcUrl } from "../ledger/chain.js";
import type { LedgerDomain } from "./clearing.js";
import { pairKey } from "./pairKey.js";
import { RegistryReader, type RegistryReadOptions } from "./registry.js";
import {
  CLOCK_SKEW_S,
  type InboundRequest,
  type PeerLookup,
  type Refused,
  signRequest,
  verifyHeaders,
  verifyRequest,
} from "./signature.js";
import { FederationNonces, FederationTransactions, type PeerTraffic } from "./store.js";
import { DISTRUST_WORDS, type RegistryEntry, staleAfterMs, type Trust, trustOf } from "./trust.js";

/** Why a replayed request is refused. */
export const REPLAYED = "this request was already received: a replay";

export interface FederationOptions {
  /** JSON-RPC URL of the chain with the registry */
  rpcUrl: string;
  /** FederationRegistry address */
  registry: Address;
  /** this coordinator's secp256k1 key (coordinator-key.json); never logged */
  privateKey: Hex;
  /** how often the registry is read; a revoked peer is cut off within it. Default 15 s */
  refreshMs?: number;
  /** where the registry's events are read from, and how far below the head (registry.ts) */
  read?: RegistryReadOptions;
  /** how long a signature this coordinator makes is valid, s (at most 60). Default 60 */
  validityS?: number;
  /** how long trust read earlier is believed while reads fail; then every peer is cut off. Default max(4 refreshes, 60 s) */
  staleAfterMs?: number;
  /** forwarded jobs (docs/federation.md): both ways on, no inbound cap, capacity read every 5 s, by default */
  forwarding?: { outbound?: boolean; inbound?: boolean; inboundCapPerPeer?: number; capacityPollMs?: number };
}

export const DEFAULT_FEDERATION_REFRESH_MS = 15_000;

/** A peer that was trusted and no longer is. */
export interface PeerCutOff {
  peer: Address;
  reason: DistrustReason;
}

/** The peer a verified request came from. */
export interface VerifiedPeer {
  address: Address;
  url: string;
  trustPath: TrustPath;
}

/**
 * A verified request: its sender, and whether its nonce was unused (`fresh`: awaited already
 * unless the caller asked for it later, to overlap the nonce's write with its own first one).
 */
export type Inbound = { ok: true; peer: VerifiedPeer; fresh: Promise<boolean> } | Refused;

/** What forwarding adds to `GET /v1/federation`. */
export interface ForwardingView {
  settings: FederationResponse["forwarding"];
  /** a peer's last advertised capacity */
  capacity(address: Address): PeerCapacity | null;
  /** each peer's forwarded jobs and credits both ways */
  traffic(): Promise<Map<Address, PeerTraffic>>;
}

export class Federation extends EventEmitter<{ "peer.untrusted": [PeerCutOff] }> {
  readonly address: Address;
  /** this coordinator's key as a signer (receipts); its secret is never logged */
  private readonly account: PrivateKeyAccount;
  readonly refreshMs: number;
  private entries = new Map<string, RegistryEntry>();
  private trusted = new Set<string>();
  private readonly keys = new Map<string, Buffer>();
  private refreshedAt: Date | null = null;
  /** set when reads failed for too long: trust read earlier is no longer believed */
  private unreadable = false;
  private timer?: NodeJS.Timeout;
  private refreshing?: Promise<void>;
  private readonly nonces: FederationNonces;
  private readonly transactions: FederationTransactions;

  private constructor(
    private readonly o: FederationOptions,
    private readonly reader: RegistryReader,
    readonly chainId: number,
    db: Db,
    private readonly logger: Logger,
  ) {
    super();
    this.account = privateKeyToAccount(o.privateKey);
    this.address = this.account.address.toLowerCase() as Address;
    this.refreshMs = o.refreshMs ?? DEFAULT_FEDERATION_REFRESH_MS;
    this.nonces = new FederationNonces(db);
    this.transactions = new FederationTransactions(db);
  }

  /** Connects to the registry, reads it once, and keeps reading it every refreshMs. */
  static async start(db: Db, o: FederationOptions, logger: Logger): Promise<Federation> {
    const probe = createPublicClient({ transport: http(o.rpcUrl, { retryCount: 1, timeout: 10_000 }) });
    const rpc = redactRpcUrl(o.rpcUrl);
    const chainId = await probe.getChainId().catch((err: Error) => {
      throw new Error(`the chain at ${rpc} does not answer: ${chainErrorText(err, o.rpcUrl)}`);
    });
    const code = await probe.getCode({ address: o.registry }).catch((err: Error) => {
      throw new Error(`the chain at ${rpc} did not give the registry's code: ${chainErrorText(err, o.rpcUrl)}`);
    });
    if (!code || code === "0x") throw new Error(`no FederationRegistry contract at ${o.registry} on chain ${chainId} (${rpc})`);
    const chain = defineChain({
      id: chainId,
      name: `chain ${chainId}`,
      nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
      rpcUrls: { default: { http: [o.rpcUrl] } },
    });
    const client = createPublicClient({ chain, transport: http(o.rpcUrl, { retryCount: 2, timeout: 15_000 }) }) as PublicClient;
    const address = privateKeyToAccount(o.privateKey).address;
    const f = new Federation(o, new RegistryReader(client, o.registry, address, o.read), chainId, db, logger);
    await f.refresh();
    f.timer = setInterval(() => {
      f.refresh().catch((err: Error) => f.readFailed(err));
    }, f.refreshMs);
    logger.info({ address: f.address, registry: o.registry, refreshMs: f.refreshMs }, "federation on");
    return f;
  }

  /** Stops reading the registry (and waits for a read under way). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.refreshing?.catch(() => undefined);
  }

  /** Reads the registry now, re-decides trust, and cuts off peers no longer trusted. */
  refresh(): Promise<void> {
    this.refreshing ??= this.doRefresh().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  /** A failed read: trust stays as last read for a while, then every peer is cut off. */
  private readFailed(err: Error): void {
    const since = Date.now() - (this.refreshedAt?.getTime() ?? 0);
    if (since <= (this.o.staleAfterMs ?? staleAfterMs(this.refreshMs))) {
      this.logger.warn(
        { err: chainErrorText(err, this.o.rpcUrl) },
        "reading the federation registry failed; trust stays as last read for now",
      );
      return;
    }
    this.logger.error(
      { err: chainErrorText(err, this.o.rpcUrl), sinceMs: since },
      "the federation registry has not been readable for too long: every peer is cut off",
    );
    this.unreadable = true;
    for (const peer of this.trusted) this.emit("peer.untrusted", { peer: peer as Address, reason: "registry_unreadable" });
    this.trusted = new Set();
  }

  private async doRefresh(): Promise<void> {
    this.entries = new Map(await this.reader.read());
    this.refreshedAt = new Date();
    this.unreadable = false;
    const nowS = Date.now() / 1000;
    const trusted = new Set<string>();
    for (const e of this.entries.values()) if (e.address !== this.address && trustOf(e, nowS).trusted) trusted.add(e.address);
    for (const peer of this.trusted) {
      if (trusted.has(peer)) continue;
      const e = this.entries.get(peer);
      const t = e ? trustOf(e, nowS) : undefined;
      const reason: DistrustReason = t && !t.trusted ? t.reason : "revoked";
      this.logger.warn({ peer, reason }, "federation peer no longer trusted: cut off");
      this.emit("peer.untrusted", { peer: peer as Address, reason });
    }
    this.trusted = trusted;
    await Promise.all([this.nonces.purge(), this.transactions.purge()]).catch((err: Error) =>
      this.logger.warn({ err: err.message }, "forgetting expired federation nonces or transactions failed; next refresh tries again"),
    );
  }

  /** Signs a federation receipt with this coordinator's key (EIP-712, in the ledger's domain; clearing.ts). */
  signReceipt(r: FederationReceipt, domain: LedgerDomain): Promise<Hex> {
    return this.account.signTypedData(federationReceiptTypedData(r, domain));
  }

  /** This coordinator's own registry entry, if it is registered. */
  self(): RegistryEntry | undefined {
    return this.entries.get(this.address);
  }

  /** A registered peer, if known. */
  peer(address: Address): RegistryEntry | undefined {
    return this.entries.get(address.toLowerCase());
  }

  /** A registered peer's trust now: as of the last read for revocations, by the clock for expiry. */
  private trustNow(e: RegistryEntry, nowS = Date.now() / 1000): Trust {
    const t = trustOf(e, nowS);
    if (!t.trusted || this.trusted.has(e.address)) return t;
    return { trusted: false, reason: this.unreadable ? "registry_unreadable" : "revoked" };
  }

  /** Whether a peer is trusted now. */
  isTrusted(address: Address): boolean {
    const e = this.peer(address);
    return Boolean(e && e.address !== this.address && this.trustNow(e).trusted);
  }

  /** The peers trusted now. */
  trustedPeers(): Address[] {
    return [...this.entries.values()].map((e) => e.address).filter((a) => this.isTrusted(a));
  }

  /** The pair key with a peer (cached per pair of key ids) and this coordinator's key id (0 while unregistered). */
  private pairKeyWith(peer: RegistryEntry): { key: Buffer; ownKeyId: number } {
    const ownKeyId = this.self()?.keyId ?? 0;
    const cacheKey = `${peer.address}:${peer.keyId}:${ownKeyId}`;
    let key = this.keys.get(cacheKey);
    if (!key) {
      key = pairKey(this.o.privateKey, { address: this.address, keyId: ownKeyId }, peer.publicKey, peer);
      this.keys.set(cacheKey, key);
    }
    return { key, ownKeyId };
  }

  /** The headers that sign a request to `peer` (its URL must be the one registered). */
  sign(peer: Address, method: string, url: string, body: string | Uint8Array = ""): Record<string, string> {
    const e = this.peer(peer);
    if (!e) throw new Error(`${peer} is not registered in the federation registry`);
    const { key, ownKeyId } = this.pairKeyWith(e);
    const u = new URL(url);
    return signRequest(
      key,
      { method, authority: u.host, target: u.pathname + u.search, body, origin: this.address, destination: e.address },
      // the key ids of the origin, then of the destination
      { keyid: `${ownKeyId}:${e.keyId}`, validityS: this.o.validityS },
    );
  }

  /**
   * Sends a signed request to a trusted peer at its registered URL; `path` is under it (e.g.
   * `/federation/v1/ping`). A JSON body is sent as application/json. Only over https, unless
   * the peer is on loopback; redirects are not followed.
   */
  async signedFetch(peer: Address, method: string, path: string, body?: unknown, init: { signal?: AbortSignal } = {}): Promise<Response> {
    const e = this.peer(peer);
    if (!e) throw new Error(`${peer} is not registered in the federation registry`);
    const t = this.trustNow(e);
    if (!t.trusted) throw new Error(`${peer} is not trusted by this site: ${DISTRUST_WORDS[t.reason]}`);
    const url = new URL(path, e.url.endsWith("/") ? e.url : `${e.url}/`).toString();
    // between sites only https: plain http would show the job and its answer to the path
    const problem = peerUrlProblem(url);
    if (problem) throw new Error(`${peer}'s registered URL cannot be used: ${problem}`);
    const raw = body === undefined ? "" : JSON.stringify(body);
    const headers = this.sign(peer, method, url, raw);
    return fetch(url, {
      method,
      headers: { ...headers, ...(body === undefined ? {} : { "content-type": "application/json" }) },
      body: body === undefined ? undefined : raw,
      signal: init.signal,
      // a redirect would take the signed request somewhere its signature was not made for
      redirect: "error",
    });
  }

  /** What verify knows of a claimed origin. */
  private lookup(origin: Address): PeerLookup {
    const e = this.peer(origin);
    if (!e || e.address === this.address) return { kind: "unknown" };
    const t = this.trustNow(e);
    if (!t.trusted && t.reason === "expired") return { kind: "expired", validUntil: e.validUntil };
    if (!t.trusted) return { kind: "untrusted", why: DISTRUST_WORDS[t.reason] };
    const { key, ownKeyId } = this.pairKeyWith(e);
    return { kind: "ok", keyid: `${e.keyId}:${ownKeyId}`, key };
  }

  /** The checks of a peer's request that need no body (verifyHeaders): why it is refused, or undefined to read its body. */
  precheck(r: Omit<InboundRequest, "body">, now = Date.now()): Refused | undefined {
    const h = verifyHeaders(r, this.address, (origin) => this.lookup(origin), now);
    return h.ok ? undefined : h;
  }

  /**
   * Verifies a peer's signed request and uses its nonce up. `nonceLater`: the nonce's write is
   * left running (`fresh`), for a caller that overlaps it with its own first write and acts on
   * nothing before it knows the request is no replay; else a replay is refused here.
   */
  async verify(r: InboundRequest, now = Date.now(), nonceLater = false): Promise<Inbound> {
    const v = verifyRequest(r, this.address, (origin) => this.lookup(origin), now);
    if (!v.ok) return v;
    const fresh = this.nonces.remember(v.origin, v.nonce, new Date((v.expires + CLOCK_SKEW_S) * 1000));
    if (!nonceLater && !(await fresh)) return { ok: false, reason: "replayed", detail: REPLAYED };
    const e = this.peer(v.origin) as RegistryEntry;
    const t = this.trustNow(e, now / 1000);
    return { ok: true, peer: { address: e.address, url: e.url, trustPath: t.trusted ? t.path : "admitted" }, fresh };
  }

  /** `GET /v1/federation`: public facts only. */
  async view(forwarding?: ForwardingView): Promise<FederationResponse> {
    const traffic = (await forwarding?.traffic()) ?? new Map<Address, PeerTraffic>();
    const nowS = Date.now() / 1000;
    const self = this.self();
    const iso = (s: number) => new Date(s * 1000).toISOString();
    return {
      self: {
        address: this.address,
        status: self?.status ?? "unregistered",
        url: self?.url ?? null,
        keyId: self?.keyId ?? null,
        validUntil: self ? iso(self.validUntil) : null,
        metadata: self?.metadata ?? null,
      },
      registry: this.o.registry,
      chainId: this.chainId,
      refreshMs: this.refreshMs,
      refreshedAt: this.refreshedAt?.toISOString() ?? null,
      peers: [...this.entries.values()]
        .filter((e) => e.address !== this.address)
        .map((e) => {
          const t = this.trustNow(e, nowS);
          return {
            address: e.address,
            url: e.url,
            status: e.status,
            trusted: t.trusted,
            trustPath: t.trusted ? t.path : null,
            distrust: t.trusted ? null : t.reason,
            keyId: e.keyId,
            validUntil: iso(e.validUntil),
            metadata: e.metadata,
            publicKey: e.publicKey,
            capacity: forwarding?.capacity(e.address) ?? null,
            ...viewTraffic(traffic.get(e.address)),
          };
        }),
      forwarding: forwarding?.settings ?? { outbound: false, inbound: false, inboundCapPerPeer: null },
    };
  }
}

function viewTraffic(t: PeerTraffic | undefined): Pick<FederationPeer, "forwarded" | "credits"> {
  return {
    forwarded: t?.jobs ?? { out: 0, in: 0 },
    credits: { out: String(t?.credits.out ?? 0n), in: String(t?.credits.in ?? 0n) },
  };
}
