/**
 * A whole local system for tests: a real coordinator (PGlite, or PostgreSQL when
 * DATABASE_URL is set) and a real node daemon running llama-server on the
 * default model, joined by a real control channel on loopback.
 */
import { randomBytes } from "node:crypto";
import { type CoordinatorOptions, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { DEFAULT_MODEL, startNodeDaemon } from "@sharedllm/node";
import OpenAI from "openai";
import { journalSum, quietLogger, tempPaths, testDatabase } from "./helpers.ts";

export const MODEL = DEFAULT_MODEL.id;

export async function startSystem(
  opts: {
    slots?: number;
    ledger?: CoordinatorOptions["ledger"];
    models?: CoordinatorOptions["models"];
    indexer?: CoordinatorOptions["indexer"];
    queueWaitMs?: number;
  } = {},
) {
  const paths = await tempPaths();
  const logger = quietLogger();
  const joinToken = randomBytes(32).toString("base64url");
  const database = await testDatabase();
  const coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger,
    ledger: opts.ledger,
    models: opts.models,
    indexer: opts.indexer,
    queueWaitMs: opts.queueWaitMs,
  });
  const { secret: apiKey } = await createApiKey(coordinator.db, "test");
  const node = await startNodeDaemon({
    paths,
    coordinatorUrl: coordinator.url,
    joinToken,
    model: "default",
    slots: opts.slots ?? 2,
    contextPerSlot: 2048,
    logger,
  });
  const client = new OpenAI({ baseURL: `${coordinator.url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });
  return {
    paths,
    joinToken,
    database,
    coordinator,
    node,
    apiKey,
    client,
    /** POST JSON to the coordinator with this system's key (or the headers given) */
    post(path: string, body: unknown, headers: Record<string, string> = { authorization: `Bearer ${apiKey}` }) {
      return fetch(coordinator.url + path, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    },
    /** the coordinator's credit journal: the sum of one kind of entry for an address (smallest unit) */
    journal(address: string, kind: "charge" | "earn" | "hold" | "release"): Promise<bigint> {
      return journalSum(coordinator.db, address, kind);
    },
    async close() {
      await node.stop();
      await coordinator.close();
      await database.cleanup();
      await paths.cleanup();
    },
  };
}

export type System = Awaited<ReturnType<typeof startSystem>>;
