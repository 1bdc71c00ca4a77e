/**
 * Assembles and starts a coordinator: database, fleet, and the fastify plugins
 * (errors, health, openai, control). One explicit context, no globals: what it
 * needs comes in through CoordinatorOptions, and close() releases all of it.
 */
import websocket from "@fastify/websocket";
import { DEV_CHAIN_ID } from "@sharedllm/contracts";
import { HEARTBEAT_INTERVAL_MS } from "@sharedllm/protocol";
import { webRoot } from "@sharedllm/web";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { ApiKeyVerifier } from "./apiKeys.js";
import { type Db, openDatabase } from "./db/database.js";
import { errorsPlugin } from "./errors.js";
import { Fleet, type KnownModel, type SchedulingPolicy } from "./fleet.js";
import { type ChainOptions, LedgerChain } from "./ledger/chain.js";
import { DEFAULT_PRICING, Metering, type Pricing } from "./ledger/metering.js";
import { Receipts } from "./ledger/receipts.js";
import { type SettlementOptions, Settler } from "./ledger/settlement.js";
import { Metrics } from "./metrics.js";
import { accountsPlugin } from "./plugins/accounts.js";
import { controlPlugin, type LocalDial } from "./plugins/control.js";
import { healthPlugin } from "./plugins/health.js";
import { networkPlugin } from "./plugins/network.js";
import { nodesPlugin } from "./plugins/nodes.js";
import { openaiPlugin } from "./plugins/openai.js";
import { webPlugin } from "./plugins/web.js";

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
  /** largest accepted request body, bytes */
  bodyLimit?: number;
  /** credits on an EVM chain; without it every key is free and nodes earn nothing */
  ledger?: { chain: ChainOptions; pricing?: Pricing; settlement?: SettlementOptions };
  /** the web portal's build, served at `/`; default `web/dist` */
  webRoot?: string;
}

export interface Coordinator {
  url: string;
  app: FastifyInstance;
  db: Db;
  fleet: Fleet;
  /** present when the coordinator runs with a ledger */
  ledger?: { chain: LedgerChain; metering: Metering; receipts: Receipts; settler: Settler };
  /** the control channel for a node in this process, opened with its session token (no loopback WebSocket) */
  dialLocal: LocalDial;
  close(): Promise<void>;
}

export async function startCoordinator(o: CoordinatorOptions): Promise<Coordinator> {
  const db = await openDatabase({
    dataDir: o.dataDir,
    databaseUrl: o.databaseUrl,
    onConnectionError: (err) => o.logger.warn({ err: err.message }, "a PostgreSQL connection was dropped; it will be replaced"),
  });
  try {
    const fleet = new Fleet();
    const knownModels = new Map<string, KnownModel>(
      (await db.selectFrom("models").select(["id", "sha256", "source", "size_bytes"]).execute()).map((r) => [
        r.id,
        { id: r.id, sha256: r.sha256, source: r.source ?? undefined, sizeBytes: r.size_bytes === null ? undefined : Number(r.size_bytes) },
      ]),
    );
    // jobs that were running when the coordinator last stopped cannot finish any more
    await db
      .updateTable("jobs")
      .set({ status: "failed", error: "coordinator restarted", finished_at: new Date() })
      .where("status", "=", "running")
      .execute();
    const ledger = o.ledger && (await openLedger(db, o.ledger, fleet, o.logger));
    const app = Fastify({
      loggerInstance: o.logger as FastifyBaseLogger,
      bodyLimit: o.bodyLimit ?? 8 * 1024 * 1024,
      forceCloseConnections: true,
    });
    await app.register(errorsPlugin);
    await app.register(websocket, { options: { perMessageDeflate: false, skipUTF8Validation: true, maxPayload: 16 * 1024 * 1024 } });
    const metrics = new Metrics(fleet);
    await app.register(healthPlugin, { fleet, credits: Boolean(ledger) });
    await app.register(networkPlugin, { db, fleet, metrics });
    await app.register(nodesPlugin, { db, joinToken: o.joinToken });
    let dialLocal: LocalDial | undefined;
    await app.register(controlPlugin, {
      exposeLocalDial: (dial) => {
        dialLocal = dial;
      },
      db,
      fleet,
      knownModels,
      heartbeatIntervalMs: o.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS,
      receipts: ledger?.receipts,
    });
    const keys = new ApiKeyVerifier(db);
    await app.register(openaiPlugin, { db, fleet, knownModels, metrics, policy: o.policy, keys, ledger });
    if (ledger) await app.register(accountsPlugin, { db, keys, ...ledger });
    await app.register(webPlugin, { root: o.webRoot ?? webRoot });
    const address = await app.listen({ host: o.host, port: o.port });
    ledger?.settler.start();
    return {
      url: address.replace("[::1]", "127.0.0.1"),
      app,
      db,
      fleet,
      ledger,
      dialLocal: (token) => (dialLocal as LocalDial)(token),
      async close() {
        for (const n of fleet.list()) fleet.remove(n.id, "coordinator stopping");
        await app.close();
        await ledger?.settler.stop();
        await db.destroy();
      },
    };
  } catch (err) {
    await db.destroy();
    throw err;
  }
}

/**
 * Connects the ledger. The journal belongs to one ledger contract on one chain: a dev chain that
 * was restarted (it keeps no state) starts the journal over; any other change is refused.
 */
async function openLedger(db: Db, o: NonNullable<CoordinatorOptions["ledger"]>, fleet: Fleet, logger: Logger) {
  const chain = await LedgerChain.connect(o.chain);
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
      await tx.deleteFrom("receipts").execute();
      await tx.deleteFrom("settlements").execute();
      await tx.deleteFrom("batch_entries").execute();
      await tx.deleteFrom("set_aside_entries").execute();
    });
  }
  await db
    .insertInto("meta")
    .values({ key: "ledger", value: identity })
    .onConflict((c) => c.column("key").doUpdateSet({ value: identity }))
    .execute();
  const released = await Metering.releaseOrphanedHolds(db);
  if (released) logger.warn({ released }, "released credit holds of jobs that ended with the last run");
  const metering = new Metering(db, chain, o.pricing ?? DEFAULT_PRICING);
  const receipts = new Receipts(db, chain.chainId, chain.ledger, chain.coordinator, (node, frame) => {
    const n = fleet.get(node.toLowerCase());
    if (!n) return false;
    n.send(frame);
    return true;
  });
  const settler = new Settler(db, chain, logger, o.settlement);
  await settler.checkWithdrawalNotice();
  logger.info({ chainId: chain.chainId, ledger: chain.ledger, coordinator: chain.coordinator }, "credit ledger connected");
  return { chain, metering, receipts, settler };
}
