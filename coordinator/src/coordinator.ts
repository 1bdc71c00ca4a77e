/**
 * Assembles and starts a coordinator: database, fleet, jobs, ledger, and the fastify plugins
 * (errors, health, network, nodes, control, openai, accounts when it has a ledger, history and its
 * indexer when it has a chain, web).
 * One explicit context, no globals: what it needs comes in through CoordinatorOptions,
 * and close() releases all of it.
 */
import { createRequire } from "node:module";
import { networkInterfaces } from "node:os";
import rateLimit from "@fastify/rate-limit";
import websocket from "@fastify/websocket";
import { DEV_CHAIN_ID } from "@sharedllm/contracts";
import {
  ApiError,
  type BrowserNodesMode,
  CONTROL_SUBPROTOCOL,
  HEARTBEAT_INTERVAL_MS,
  MAX_NODE_FRAME_BYTES,
  type ReceiptRequest,
} from "@sharedllm/protocol";
import { webRoot } from "@sharedllm/web";
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from "fastify";
import type { Logger } from "pino";
import { ApiKeyVerifier } from "./apiKeys.js";
import { type AuditOptions, Audits, type Judge } from "./audits/audits.js";
import { Canaries } from "./audits/canaries.js";
import { calibratedJudge } from "./audits/thresholds.js";
import { catalogue, type PinnedModel } from "./catalogue.js";
import { Clusters } from "./clusters.js";
import { type Db, openDatabase } from "./db/database.js";
import { errorsPlugin, routerErrorOptions } from "./errors.js";
import { Federation, type FederationOptions } from "./federation/federation.js";
import { type ForwardingSettings, inboundRoutes } from "./federation/forwarding.js";
import { Peers } from "./federation/peers.js";
import { federationPlugin } from "./federation/plugin.js";
import { FederatedJobs } from "./federation/store.js";
import { Fleet, type SchedulingPolicy } from "./fleet.js";
import { History } from "./indexer/history.js";
import { Indexer, type IndexerOptions } from "./indexer/indexer.js";
import { InstanceLease, LEASE_RENEW_MS } from "./instance.js";
import { Jobs } from "./jobs/jobs.js";
import { JobTable } from "./jobs/records.js";
import { type ChainOptions, LedgerChain } from "./ledger/chain.js";
import { DEFAULT_PRICING, Metering, type Pricing } from "./ledger/metering.js";
import { Receipts } from "./ledger/receipts.js";
import { type SettlementOptions, Settler } from "./ledger/settlement.js";
import { Metrics } from "./metrics.js";
import { accountsPlugin } from "./plugins/accounts.js";
import { auditsPlugin } from "./plugins/audits.js";
import { type BrowserBlob, browserNodesPlugin } from "./plugins/browserNodes.js";
import { controlPlugin, type LocalDial } from "./plugins/control.js";
import { healthPlugin } from "./plugins/health.js";
import { historyPlugin } from "./plugins/history.js";
import { networkPlugin } from "./plugins/network.js";
import { nodesPlugin } from "./plugins/nodes.js";
import { openaiPlugin } from "./plugins/openai.js";
import { openapiPlugin } from "./plugins/openapi.js";
import { webPlugin } from "./plugins/web.js";
import { Replicas } from "./replicas/replicas.js";

/** This coordinator's version, as its package says (the API spec names it). */
const COORDINATOR_VERSION = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

export interface CoordinatorOptions {
  host: string;
  /** 0 picks a free port */
  port: number;
  /** PGlite data folder (or `memory://`), used when databaseUrl is absent */
  dataDir: string;
  databaseUrl?: string;
  /** the site's join token: nodes sign their registration with it */
  joinToken: string;
  logger: Logger;
  /** how often nodes send heartbeats; default 5 s */
  heartbeatIntervalMs?: number;
  /** extra say over where each job may run (site-only keys, federation); default: anywhere */
  policy?: SchedulingPolicy;
  /** how long a job whose unit failed mid-job waits for another to continue it; default 5 s */
  continueWaitMs?: number;
  /** how long a unit may go without sending once output has begun before it counts as failed; default 20 s */
  stallMs?: number;
  /** how long a request waits its turn when no unit serving its model has room; default 10 s */
  queueWaitMs?: number;
  /** largest accepted request body, bytes */
  bodyLimit?: number;
  /** credits on an EVM chain; without it every key is free and nodes earn nothing */
  ledger?: {
    chain: ChainOptions;
    pricing?: Pricing;
    settlement?: Omit<SettlementOptions, "audits">;
    /** audits of paid jobs (docs/verification.md): on when some auditor is trusted; the judge defaults to the calibrated one */
    audits?: Omit<AuditOptions, "judge"> & { judge?: Judge };
  };
  /** the models nodes may be asked to load, with their sources and hashes (the operator's, never a node's) */
  models?: PinnedModel[];
  /** the web portal's build, served at `/`; default `web/dist` */
  webRoot?: string;
  /** serve HTTPS (and WSS to nodes) with this PEM certificate chain and key */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /**
   * The origins (scheme://host:port) users reach this coordinator at: Sign-In with Ethereum
   * messages must name one of them. Default: the URL it listens on (and its localhost twin).
   */
  publicOrigins?: string[];
  /** per client address, per minute; default DEFAULT_RATE_LIMITS */
  rateLimits?: Partial<RateLimits>;
  /**
   * The addresses (or CIDR ranges) of the reverse proxies in front of this coordinator (nginx,
   * docs/hosting.md): a request from one of them counts as coming from the address its
   * X-Forwarded-For names (rate limits, logs), its scheme from X-Forwarded-Proto. Default none: the
   * connection's own address, which behind a proxy is the proxy's for every client.
   */
  trustProxy?: string[];
  /** how long a client may take to send a request; default DEFAULT_HTTP_TIMEOUTS */
  httpTimeouts?: Partial<HttpTimeouts>;
  /** federation with other sites (docs/federation.md): trust from FederationRegistry, signed calls */
  federation?: FederationOptions;
  /**
   * The chain's history indexed into the database for the portal (docs/indexing.md): on whenever a
   * chain is configured (credits or federation), reading the ledger and the registry; false turns it off
   */
  indexer?: IndexerSettings | false;
  /**
   * Browser nodes (docs/browser-node.md): who may join (default off), and the model files of this
   * machine they may fetch by sha256; files over `maxModelBytes` (default BROWSER_MODEL_CAP_BYTES) are not offered.
   */
  browserNodes?: { mode: BrowserNodesMode; blobs: readonly BrowserBlob[]; maxModelBytes?: number };
  /**
   * One of several replicas of this coordinator (docs/replicas.md): they share the PostgreSQL
   * database (`databaseUrl`, required) and reach each other's nodes over this NATS server.
   */
  replicas?: { natsUrl: string };
}

/** The indexer's settings beyond the chain and contracts it takes from the ledger and federation options. */
export type IndexerSettings = Partial<Omit<IndexerOptions, "rpcUrl" | "ledger">> & {
  /** a block explorer's base URL: the portal links each transaction to `{explorerUrl}/tx/{hash}` */
  explorerUrl?: string;
};

/**
 * The largest model file offered to browser nodes: a tab's WebAssembly memory is 4 GiB at most,
 * wllama refuses files over 2 GB, and a visitor should not wait long for the download.
 */
export const BROWSER_MODEL_CAP_BYTES = 1024 * 1024 * 1024;

/** How many requests one client address may make per minute to the endpoints that write for anyone who asks. */
export interface RateLimits {
  /** sign-in nonces and sign-in attempts */
  signIns: number;
  /** node registrations (signed or not) */
  registrations: number;
}

export const DEFAULT_RATE_LIMITS: RateLimits = { signIns: 30, registrations: 120 };

/**
 * How long a client may take to send a request, from its connection (docs/security.md, "Hostile
 * input"): a client that trickles its headers or body (slowloris) is cut off there, not held for
 * ever. The response is not timed: a stream lasts as long as its job.
 */
export interface HttpTimeouts {
  /** the request line and headers */
  headersMs: number;
  /** the whole request, body included */
  requestMs: number;
}

export const DEFAULT_HTTP_TIMEOUTS: HttpTimeouts = { headersMs: 10_000, requestMs: 60_000 };

export interface Coordinator {
  url: string;
  app: FastifyInstance;
  db: Db;
  fleet: Fleet;
  /** present when the coordinator runs with a ledger */
  ledger?: { chain: LedgerChain; metering: Metering; receipts: Receipts; settler: Settler; audits?: Audits };
  /** present when federation is on */
  federation?: Federation;
  /** present when the chain's history is indexed */
  indexer?: Indexer;
  /** the trusted peers jobs may be forwarded to, when federation is on */
  peers?: Peers;
  /** this site's say on forwarded jobs; an operator (or a test) may change it while it runs */
  forwarding: ForwardingSettings;
  /** the control channel for a node in this process, opened with its session token (no loopback WebSocket) */
  dialLocal: LocalDial;
  /**
   * Stops taking jobs (a request gets 503: another replica, or this one restarted, takes it) and
   * waits, at most `withinMs`, for the jobs in flight to end: a stop that loses no stream.
   */
  drain(withinMs: number): Promise<void>;
  close(): Promise<void>;
}

export async function startCoordinator(o: CoordinatorOptions): Promise<Coordinator> {
  if (o.replicas && !o.databaseUrl) {
    throw new Error("replicas share one PostgreSQL database: give a database URL as well as the NATS URL");
  }
  const db = await openDatabase({
    dataDir: o.dataDir,
    databaseUrl: o.databaseUrl,
    onConnectionError: (err) => o.logger.warn({ err: err.message }, "a PostgreSQL connection was dropped; it will be replaced"),
  });
  let federation: Federation | undefined;
  let peers: Peers | undefined;
  let indexer: Indexer | undefined;
  let replicas: Replicas | undefined;
  /** every job forwarded to a peer or run here for one */
  const forwarded = new FederatedJobs(db);
  const fwd = o.federation?.forwarding;
  const forwarding: ForwardingSettings = {
    outbound: Boolean(o.federation) && fwd?.outbound !== false,
    inbound: Boolean(o.federation) && fwd?.inbound !== false,
    inboundCapPerPeer: fwd?.inboundCapPerPeer,
  };
  try {
    const lease = await InstanceLease.take(db, !o.databaseUrl);
    const fleet = new Fleet();
    const knownModels = catalogue(
      o.models ?? [],
      (await db.selectFrom("models").select(["id", "sha256", "size_bytes"]).execute()).map((r) => ({
        id: r.id,
        sha256: r.sha256,
        sizeBytes: r.size_bytes === null ? undefined : Number(r.size_bytes),
      })),
    );
    // jobs that coordinators which have gone left running cannot finish any more; a live replica's can
    await JobTable.failOrphaned(db, { live: await lease.live() });
    // a receipt for a node another replica holds goes there
    const sendElsewhere = (node: string, frame: ReceiptRequest) => replicas?.sendTo(node, frame) ?? false;
    const ledger = o.ledger && (await openLedger(db, o.ledger, fleet, o.logger, lease, sendElsewhere));
    const timeouts = { ...DEFAULT_HTTP_TIMEOUTS, ...o.httpTimeouts };
    const slowClients = {
      headersTimeout: Math.min(timeouts.headersMs, timeouts.requestMs),
      // how often node:http looks for requests past their time: a few times within the shorter one
      connectionsCheckingInterval: Math.max(250, Math.min(5_000, Math.floor(timeouts.headersMs / 4))),
    };
    // one instance type for both: fastify types an HTTPS server apart, but the plugins do not care
    const app = Fastify({
      loggerInstance: o.logger as FastifyBaseLogger,
      bodyLimit: o.bodyLimit ?? 8 * 1024 * 1024,
      forceCloseConnections: true,
      trustProxy: o.trustProxy?.length ? o.trustProxy : false,
      requestTimeout: timeouts.requestMs,
      http: slowClients,
      ...routerErrorOptions,
      ...(o.tls && { https: { cert: o.tls.cert, key: o.tls.key, minVersion: "TLSv1.2", ...slowClients } }),
    } as FastifyServerOptions) as FastifyInstance;
    let stopping = false;
    if (o.replicas) {
      // A replica that stops takes no new request, not even to refuse it: it closes the
      // connection unanswered, which the balancer takes for a replica gone and sends the request
      // to another (docs/hosting.md). A 503 would be a site's word (no capacity), not a replica's.
      app.addHook("onRequest", async (req, reply) => {
        if (!stopping) return;
        reply.hijack();
        req.raw.socket.destroy();
      });
    }
    await app.register(errorsPlugin);
    await app.register(openapiPlugin, { version: COORDINATOR_VERSION });
    const limits = { ...DEFAULT_RATE_LIMITS, ...o.rateLimits };
    await app.register(rateLimit, {
      global: false,
      errorResponseBuilder: (_req, ctx) =>
        new ApiError("rate_limit_exceeded", `too many requests from this address; try again in ${Math.ceil(ctx.ttl / 1000)} s`),
    });
    await app.register(websocket, {
      options: {
        perMessageDeflate: false,
        skipUTF8Validation: true,
        // the only WebSocket is the control channel: a node's frames are small, and each is held whole before it is read
        maxPayload: MAX_NODE_FRAME_BYTES,
        // the handshake names only the control protocol: a tab's `bearer.<token>` is never echoed back (proxies log that header)
        handleProtocols: (protocols) => (protocols.has(CONTROL_SUBPROTOCOL) ? CONTROL_SUBPROTOCOL : false),
      },
    });
    const metrics = new Metrics(fleet);
    await app.register(healthPlugin, { fleet, credits: Boolean(ledger) });
    await app.register(networkPlugin, { db, fleet, metrics });
    await app.register(nodesPlugin, { db, joinToken: o.joinToken, registrationsPerMinute: limits.registrations });
    const browserCap = o.browserNodes?.maxModelBytes ?? BROWSER_MODEL_CAP_BYTES;
    const browserBlobs = (o.browserNodes?.blobs ?? []).filter((b) => b.sizeBytes <= browserCap);
    let origins: string[] = [];
    await app.register(browserNodesPlugin, {
      db,
      mode: o.browserNodes?.mode ?? "off",
      joinToken: o.joinToken,
      blobs: browserBlobs,
      chainId: ledger?.chain.chainId,
      publicOrigins: () => origins,
      registrationsPerMinute: limits.registrations,
    });
    let dialLocal: LocalDial | undefined;
    await app.register(controlPlugin, {
      // none while browser nodes are off: a tab registered before is served nothing
      browserModels: new Map((o.browserNodes?.mode ?? "off") === "off" ? [] : browserBlobs.map((b) => [b.sha256, b.id])),
      exposeLocalDial: (dial) => {
        dialLocal = dial;
      },
      db,
      fleet,
      clusters: new Clusters(fleet),
      knownModels,
      heartbeatIntervalMs: o.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS,
      metrics,
      receipts: ledger?.receipts,
      audits: ledger?.audits,
    });
    const keys = new ApiKeyVerifier(db);
    if (o.federation) {
      federation = await Federation.start(db, o.federation, o.logger);
      if (ledger) ledger.settler.acceptances = () => forwarded.accepted();
      metrics.federationCredits(() => forwarded.traffic());
      peers = new Peers({
        federation,
        log: o.logger,
        metrics,
        jobs: forwarded,
        ledger: ledger && { chainId: ledger.chain.chainId, verifyingContract: ledger.chain.ledger },
        pollMs: fwd?.capacityPollMs,
        outbound: () => forwarding.outbound,
        // a peer may cost no more than this site charges for the model: the user's price is the limit
        priceLimit: ledger
          ? (model) => {
              const p = ledger.metering.price(model);
              return { prompt: p.prompt * 1000n, completion: p.completion * 1000n };
            }
          : undefined,
      });
    }
    const jobs = new Jobs({
      db,
      instance: lease.id,
      fleet,
      knownModels,
      metrics,
      policy: o.policy,
      ledger,
      continueWaitMs: o.continueWaitMs,
      stallMs: o.stallMs,
      queueWaitMs: o.queueWaitMs,
      peers,
      forwarding,
    });
    const heartbeatIntervalMs = o.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS;
    if (o.replicas) {
      replicas = await Replicas.join({
        ...o.replicas,
        id: lease.id,
        joinToken: o.joinToken,
        fleet,
        knownModels,
        heartbeatIntervalMs,
        log: o.logger,
      });
    }
    await app.register(openaiPlugin, { jobs, fleet, knownModels, keys, peers });
    const audits = ledger?.audits;
    const canaries = audits?.canaryEveryMs
      ? new Canaries({ db, fleet, jobs, audits, log: app.log, everyMs: audits.canaryEveryMs })
      : undefined;
    await canaries?.start();
    if (ledger) {
      await app.register(accountsPlugin, { db, keys, ...ledger, publicOrigins: () => origins, signInsPerMinute: limits.signIns });
      if (ledger.audits) await app.register(auditsPlugin, { audits: ledger.audits, keys });
    }
    if (federation) {
      const price = ledger && ((model: string) => ledger.metering.price(model));
      await app.register(federationPlugin, {
        federation,
        routes: [
          inboundRoutes({
            db,
            federation,
            fleet,
            jobs,
            metrics,
            settings: forwarding,
            log: forwarded,
            price,
            clearing: ledger && {
              self: federation.address,
              sign: (r) =>
                (federation as Federation).signReceipt(r, { chainId: ledger.chain.chainId, verifyingContract: ledger.chain.ledger }),
            },
          }),
        ],
        forwarding: {
          get settings() {
            return { outbound: forwarding.outbound, inbound: forwarding.inbound, inboundCapPerPeer: forwarding.inboundCapPerPeer ?? null };
          },
          capacity: (address) => peers?.get(address)?.capacity ?? null,
          traffic: () => forwarded.traffic(),
        },
      });
    }
    const rpcUrl = o.ledger?.chain.rpcUrl ?? o.federation?.rpcUrl;
    if (rpcUrl && o.indexer !== false) {
      const { explorerUrl, ...settings } = o.indexer ?? {};
      indexer = new Indexer(db, o.logger, {
        ...settings,
        rpcUrl,
        ledger: o.ledger?.chain.ledger,
        registry: settings.registry ?? o.federation?.registry,
      });
      await app.register(historyPlugin, { history: new History(db), indexer, explorerUrl });
    }
    await app.register(webPlugin, { root: o.webRoot ?? webRoot });
    // suspicion is known before the first node connects
    await ledger?.audits?.start();
    const url = (await app.listen({ host: o.host, port: o.port })).replace("[::1]", "127.0.0.1");
    origins = o.publicOrigins?.length ? o.publicOrigins.map(originOf) : listenOrigins(url, o.host);
    // renewing the lease; a gone coordinator's jobs and holds are ended by whichever one is still running
    const leaseTimer = setInterval(() => {
      lease
        .renew()
        .then(() => endGone(db, lease, o.logger, Boolean(ledger)))
        .catch((err: Error) => o.logger.warn({ err: err.message }, "renewing this coordinator's lease failed"));
    }, LEASE_RENEW_MS);
    ledger?.settler.start();
    indexer?.start();
    await peers?.start();
    return {
      url,
      app,
      db,
      fleet,
      ledger,
      federation,
      indexer,
      peers,
      forwarding,
      dialLocal: (token) => (dialLocal as LocalDial)(token),
      async drain(withinMs) {
        stopping = true;
        // with replicas, its nodes go to others: none takes a job from here any more
        jobs.stopTaking(Boolean(replicas));
        replicas?.drain();
        const deadline = Date.now() + withinMs;
        // its own clients' jobs, and other replicas' jobs on its nodes
        const inFlight = () => jobs.inFlight() + (replicas?.serving ?? 0);
        for (;;) {
          // with replicas, each node goes to another as soon as it has nothing running here
          if (replicas) for (const n of fleet.list()) if (n.active === 0) n.disconnect("this replica is stopping: connect again", 1001);
          if (inFlight() === 0 || Date.now() >= deadline) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        const left = inFlight();
        if (left) o.logger.warn({ jobs: left }, "stopping with jobs still in flight");
      },
      async close() {
        clearInterval(leaseTimer);
        await peers?.stop();
        await federation?.stop();
        for (const n of fleet.list()) fleet.remove(n.id, "coordinator stopping");
        // the other replicas hear how their jobs on this one's nodes ended, and that it has gone
        await replicas?.close();
        await app.close();
        await indexer?.stop();
        // a hold whose release failed is released by whoever finds this lease lapsed: it is left to lapse
        if ((await ledger?.metering.stop()) ?? true) await lease.end();
        else o.logger.warn("some credit holds could not be released; another replica, or the next start, releases them");
        ledger?.audits?.stop();
        canaries?.stop();
        await ledger?.settler.stop();
        await db.destroy();
      },
    };
  } catch (err) {
    await replicas?.close();
    await indexer?.stop();
    await federation?.stop();
    await db.destroy();
    throw err;
  }
}

/** The origin of a URL, e.g. `https://llm.example.org`; throws on what is not an http(s) URL. */
function originOf(url: string): string {
  const u = new URL(url);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`${url} is not an http(s) origin`);
  return u.origin;
}

/**
 * The origins the coordinator answers at: its listen URL, `localhost` with it on loopback, and
 * every address of this machine when it listens on all of them.
 */
function listenOrigins(url: string, host: string): string[] {
  const u = new URL(url);
  const hosts = new Set([u.hostname]);
  if (u.hostname === "127.0.0.1") hosts.add("localhost");
  if (host === "0.0.0.0" || host === "::") {
    for (const a of Object.values(networkInterfaces()).flat()) {
      if (a) hosts.add(a.family === "IPv6" ? `[${a.address}]` : a.address);
    }
    hosts.add("localhost");
  }
  return [...hosts].map((h) => {
    const origin = new URL(url);
    origin.hostname = h;
    return origin.origin;
  });
}

/**
 * Connects the ledger. The journal belongs to one ledger contract on one chain: a dev chain that
 * was restarted (it keeps no state) starts the journal over; any other change is refused.
 */
async function openLedger(
  db: Db,
  o: NonNullable<CoordinatorOptions["ledger"]>,
  fleet: Fleet,
  logger: Logger,
  lease: InstanceLease,
  sendElsewhere: (node: string, frame: ReceiptRequest) => boolean,
) {
  const chain = await LedgerChain.connect(o.chain, (message) => logger.warn(message));
  // the wait for the chain may have outlasted the lease: it is this process's again before any sweep
  await lease.renew();
  const genesis = await chain.public.getBlock({ blockNumber: 0n });
  const identity = `${chain.chainId}:${chain.ledger.toLowerCase()}:${chain.coordinator.toLowerCase()}:${genesis.hash}`;
  const stored = await db.selectFrom("meta").select("value").where("key", "=", "ledger").executeTakeFirst();
  if (stored && stored.value !== identity) {
    if (chain.chainId !== DEV_CHAIN_ID) {
      throw new Error(
        `this database keeps the credit journal of ledger ${stored.value}, not ${identity}; use the database made for that ledger`,
      );
    }
    logger.warn("the dev chain was restarted and keeps no state: the credit journal starts over");
    await db.transaction().execute(async (tx) => {
      await tx.deleteFrom("ledger_entries").execute();
      await tx.deleteFrom("credit_accounts").execute();
      await tx.deleteFrom("receipts").execute();
      await tx.deleteFrom("settlements").execute();
      await tx.deleteFrom("batch_entries").execute();
      await tx.deleteFrom("set_aside_entries").execute();
      await tx.deleteFrom("receipt_proposals").execute();
    });
  }
  await db
    .insertInto("meta")
    .values({ key: "ledger", value: identity })
    .onConflict((c) => c.column("key").doUpdateSet({ value: identity }))
    .execute();
  await endGone(db, lease, logger, true, true);
  const metering = new Metering(db, chain, o.pricing ?? DEFAULT_PRICING, lease.id);
  const receipts = new Receipts(db, chain.chainId, chain.ledger, chain.coordinator, (node, frame) => {
    const n = fleet.get(node.toLowerCase());
    if (!n) return sendElsewhere(node.toLowerCase(), frame);
    n.send(frame);
    return true;
  });
  const audits = o.audits?.auditors.length
    ? new Audits(db, fleet, logger, { ...o.audits, judge: o.audits.judge ?? calibratedJudge() })
    : undefined;
  const settler = new Settler(db, chain, logger, {
    ...o.settlement,
    shared: !lease.exclusive,
    audits: audits && { windowMs: audits.windowMs, trusted: o.audits?.auditors ?? [] },
  });
  await settler.checkWithdrawalNotice();
  logger.info({ chainId: chain.chainId, ledger: chain.ledger, coordinator: chain.coordinator }, "credit ledger connected");
  return { chain, metering, receipts, settler, audits };
}

/**
 * Ends what coordinators that stopped or died left behind (see instance.ts): their running jobs
 * are failed and (`holds`) their credit holds released. At start, whatever no live coordinator
 * made; then (each renewal) what the leases found lapsed made, which costs nothing while no
 * coordinator has gone.
 */
async function endGone(db: Db, lease: InstanceLease, logger: Logger, holds: boolean, atStart = false): Promise<void> {
  const gone = await lease.lapsed();
  const holders = atStart ? { live: await lease.live() } : { gone };
  const failed = await JobTable.failOrphaned(db, holders);
  const released = holds ? await Metering.releaseOrphanedHolds(db, holders) : 0;
  await lease.forget(gone);
  if (failed) logger.warn({ failed }, "failed the jobs a coordinator that has gone left running");
  if (released) logger.warn({ released }, "released credit holds of jobs whose coordinator has gone");
}
