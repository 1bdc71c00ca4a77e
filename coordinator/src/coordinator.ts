/**
 * Assembles and starts a coordinator: database, fleet, and the fastify plugins
 * (errors, health, openai, control). One explicit context, no globals: what it
 * needs comes in through CoordinatorOptions, and close() releases all of it.
 */
import websocket from "@fastify/websocket";
import { HEARTBEAT_INTERVAL_MS } from "@sharedllm/protocol";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { ApiKeyVerifier } from "./apiKeys.js";
import { type Db, openDatabase } from "./db/database.js";
import { errorsPlugin } from "./errors.js";
import { Fleet, type KnownModel, type SchedulingPolicy } from "./fleet.js";
import { Metrics } from "./metrics.js";
import { controlPlugin } from "./plugins/control.js";
import { healthPlugin } from "./plugins/health.js";
import { networkPlugin } from "./plugins/network.js";
import { nodesPlugin } from "./plugins/nodes.js";
import { openaiPlugin } from "./plugins/openai.js";

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
}

export interface Coordinator {
  url: string;
  app: FastifyInstance;
  db: Db;
  fleet: Fleet;
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
    const app = Fastify({
      loggerInstance: o.logger as FastifyBaseLogger,
      bodyLimit: o.bodyLimit ?? 8 * 1024 * 1024,
      forceCloseConnections: true,
    });
    await app.register(errorsPlugin);
    await app.register(websocket, { options: { perMessageDeflate: false, skipUTF8Validation: true, maxPayload: 16 * 1024 * 1024 } });
    const metrics = new Metrics(fleet);
    await app.register(healthPlugin, { fleet });
    await app.register(networkPlugin, { db, fleet, metrics });
    await app.register(nodesPlugin, { db, joinToken: o.joinToken });
    await app.register(controlPlugin, { db, fleet, knownModels, heartbeatIntervalMs: o.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS });
    await app.register(openaiPlugin, { db, fleet, knownModels, metrics, policy: o.policy, keys: new ApiKeyVerifier(db) });
    const address = await app.listen({ host: o.host, port: o.port });
    return {
      url: address.replace("[::1]", "127.0.0.1"),
      app,
      db,
      fleet,
      async close() {
        for (const n of fleet.list()) fleet.remove(n.id, "coordinator stopping");
        await app.close();
        await db.destroy();
      },
    };
  } catch (err) {
    await db.destroy();
    throw err;
  }
}
