/** Table types of the coordinator's database (one schema for PGlite and PostgreSQL). */
import type { ColumnType, Generated, Insertable, Selectable } from "kysely";

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;

export interface ApiKeysTable {
  id: string;
  /** sha256 (hex) of the secret; the secret itself is never stored */
  key_hash: string;
  name: string;
  created_at: Timestamp;
  revoked_at: Timestamp | null;
}

export interface ModelsTable {
  id: string;
  sha256: string;
  /** where a node can pull it from (`default`, `hf:...`), if any node said */
  source: string | null;
  size_bytes: ColumnType<string | number | bigint | null, number | null | undefined, number | null>;
  first_seen_at: Timestamp;
}

export interface NodesTable {
  id: string;
  engine: string;
  first_seen_at: Timestamp;
  last_seen_at: Timestamp;
}

export interface NodeSessionsTable {
  /** sha256 (hex) of the control-channel session token */
  token_hash: string;
  node_id: string;
  created_at: Timestamp;
  expires_at: Timestamp;
}

export type EventKind = "node.registered" | "node.connected" | "node.disconnected" | "node.offline" | "node.availability" | "node.left";

/** Append-only journal of what happened to nodes; never updated or deleted. */
export interface EventsTable {
  id: Generated<string>;
  at: Generated<Date>;
  kind: EventKind;
  node_id: string | null;
  /** JSON */
  data: string;
}

export type JobStatus = "running" | "completed" | "failed" | "cancelled";

export interface JobsTable {
  id: string;
  kind: string;
  model: string;
  api_key_id: string;
  node_id: string | null;
  status: JobStatus;
  stream: boolean;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  error: string | null;
  created_at: Timestamp;
  finished_at: Timestamp | null;
}

export interface Database {
  api_keys: ApiKeysTable;
  models: ModelsTable;
  nodes: NodesTable;
  node_sessions: NodeSessionsTable;
  jobs: JobsTable;
  events: EventsTable;
}

export type ApiKeyRow = Selectable<ApiKeysTable>;
export type NewJob = Insertable<JobsTable>;
