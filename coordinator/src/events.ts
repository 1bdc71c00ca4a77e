/** The node event journal: one appended row per transition (registered, connected, offline, ...). */
import type { FastifyBaseLogger } from "fastify";
import type { Db } from "./db/database.js";
import type { EventKind } from "./db/schema.js";

export function recordEvent(db: Db, log: FastifyBaseLogger, kind: EventKind, nodeId: string, data: Record<string, unknown> = {}): void {
  db.insertInto("events")
    .values({ kind, node_id: nodeId, data: JSON.stringify(data) })
    .execute()
    .catch((err) => log.error({ err, kind, nodeId }, "recording an event failed"));
}
