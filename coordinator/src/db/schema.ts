/** Table types of the coordinator's database (one schema for PGlite and PostgreSQL). */
import type { ColumnType, Generated, Insertable, Selectable } from "kysely";

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;

export interface ApiKeysTable {
  id: string;
  /** sha256 (hex) of the secret; the secret itself is never stored */
  key_hash: string;
  name: string;
  /** the wallet whose credits the key spends; null for the operator's unmetered keys */
  owner_address: string | null;
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

export interface SiweNoncesTable {
  nonce: string;
  expires_at: Timestamp;
}

export interface WebSessionsTable {
  /** sha256 (hex) of the session token */
  token_hash: string;
  /** lower-case wallet address */
  address: string;
  created_at: Timestamp;
  expires_at: Timestamp;
}

/**
 * hold: credits reserved for a running job; release: a hold given back (in full);
 * charge: what a user paid for a job; earn: a node's share of a job, from an accepted receipt.
 */
export type LedgerKind = "hold" | "release" | "charge" | "earn";

/** numeric(78, 0): written as bigint, read as a decimal string */
type Amount = ColumnType<string, bigint | string, never>;

/** The append-only credit journal; balances are sums over it. */
export interface LedgerEntriesTable {
  id: Generated<string>;
  address: string;
  kind: LedgerKind;
  amount: Amount;
  job_id: string | null;
  /** for a hold: the coordinator process that made it (InstanceLease) */
  instance_id: string | null;
  created_at: Generated<Date>;
}

export type ReceiptStatus = "accepted" | "rejected";

export interface ReceiptsTable {
  id: Generated<string>;
  job_id: string;
  node_address: string;
  status: ReceiptStatus;
  reason: string | null;
  /** the receipt as JSON (bigints as strings) */
  receipt: string;
  signature: string | null;
  created_at: Generated<Date>;
}

export type SettlementStatus = "prepared" | "sent" | "confirmed";

export interface SettlementsTable {
  batch_id: number;
  status: SettlementStatus;
  /** the newest journal entry the batch took (which entries: batch_entries) */
  max_entry_id: ColumnType<string, string | bigint, never>;
  /** JSON: users, cumulative spends, earnings per node, root, total earnings */
  payload: string;
  tx_hash: string | null;
  created_at: Generated<Date>;
  confirmed_at: Timestamp | null;
}

/** The batch that took a charge or earning into settlement. */
export interface BatchEntriesTable {
  entry_id: ColumnType<string, string | bigint, never>;
  batch_id: number;
  /** the job as receipts name it (receiptJobId), lower-case */
  job_key: string | null;
}

/** A charge or earning no batch will carry, and why (see the settler's checks). */
export interface SetAsideEntriesTable {
  entry_id: ColumnType<string, string | bigint, never>;
  /** the job as receipts name it (receiptJobId), lower-case */
  job_key: string | null;
  reason: string;
  created_at: Generated<Date>;
}

/** A used registration nonce, kept until its request could no longer be fresh. */
export interface SiteNoncesTable {
  nonce: string;
  expires_at: Timestamp;
}

/** A receipt the coordinator proposed to a node and is waiting for it to sign. */
export interface ReceiptProposalsTable {
  /** the receipt's jobId (bytes32) */
  job_id: string;
  node_address: string;
  /** the proposed receipt, wire form (JSON) */
  receipt: string;
  /** the coordinator's own job id */
  job_ref: string;
  /** the cluster head that ran the job, when the node served layers of it */
  via: string | null;
  created_at: Generated<Date>;
}

/** A running coordinator's lease (instance.ts). */
export interface CoordinatorInstancesTable {
  id: string;
  started_at: Timestamp;
  seen_at: Timestamp;
}

export interface MetaTable {
  key: string;
  value: string;
}

export interface Database {
  api_keys: ApiKeysTable;
  models: ModelsTable;
  nodes: NodesTable;
  node_sessions: NodeSessionsTable;
  jobs: JobsTable;
  events: EventsTable;
  siwe_nonces: SiweNoncesTable;
  web_sessions: WebSessionsTable;
  ledger_entries: LedgerEntriesTable;
  receipts: ReceiptsTable;
  settlements: SettlementsTable;
  batch_entries: BatchEntriesTable;
  set_aside_entries: SetAsideEntriesTable;
  meta: MetaTable;
  site_nonces: SiteNoncesTable;
  receipt_proposals: ReceiptProposalsTable;
  coordinator_instances: CoordinatorInstancesTable;
}

export type ApiKeyRow = Selectable<ApiKeysTable>;
export type NewJob = Insertable<JobsTable>;
