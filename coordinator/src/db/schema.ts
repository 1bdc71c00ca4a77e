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
  /** where its jobs may run (apiKeys.ts KeyPolicy) */
  policy: Generated<string>;
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

/** A browser node's session key and the wallet whose EIP-712 delegation it registered with (it earns for the wallet). */
export interface BrowserDelegationsTable {
  session_key: string;
  wallet: string;
  coordinator: string;
  chain_id: number;
  expires_at: Timestamp;
  signature: string;
  created_at: Generated<Date>;
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
  /** the coordinator process running it (InstanceLease) */
  instance_id: string | null;
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

/** A payer's running totals of the journal (ledger_entries): its charges, and its holds not released. */
export interface CreditAccountsTable {
  address: string;
  charged: Amount;
  held: Amount;
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

export type AuditStatus = "queued" | "running" | "passed" | "failed" | "void";

/** An audit of one node's part of a paid job (docs/verification.md): what was claimed, and the auditor's scores. */
export interface AuditsTable {
  id: string;
  /** the coordinator's job id */
  job_id: string;
  /** the audited node (lower-case address) */
  node_id: string;
  model: string;
  model_sha256: string;
  kind: string;
  /** JSON: the engine request the node ran */
  request: string;
  /** JSON: the job's token ids up to the end of the node's part (the claimed output) */
  output: string;
  /** JSON: the positions of `output` the auditor scores (all in the node's part) */
  positions: string;
  /** the prompt tokens the node's receipt names (of a part that began the job; a continuing part's held the output so far) */
  prompt_tokens: number | null;
  prompt_hash: string;
  output_hash: string;
  /** a job the coordinator sent itself to check the node */
  canary: Generated<boolean>;
  status: AuditStatus;
  auditor_id: string | null;
  attempts: Generated<number>;
  /** why it failed (or was void) */
  reason: string | null;
  /** JSON: the auditor's scores */
  scores: string | null;
  /** the prompt's tokens as the auditor counted them */
  audited_prompt_tokens: number | null;
  created_at: Generated<Date>;
  /** when an auditor was last given it */
  started_at: Timestamp | null;
  finished_at: Timestamp | null;
}

/** A node's audit record. */
export interface NodeStandingTable {
  node_id: string;
  passed: Generated<number>;
  failed: Generated<number>;
  /** failed audits not yet cleared by the operator */
  suspicion: Generated<number>;
  /** set when suspicion reached the limit: no sessions, no registration, until the operator clears it */
  excluded_at: Timestamp | null;
  excluded_reason: string | null;
  updated_at: Generated<Date>;
}

/** A nonce of a peer coordinator's signed call, kept while its signature could still be fresh. */
export interface FederationNoncesTable {
  peer: string;
  nonce: string;
  expires_at: Timestamp;
}

/** A peer's transaction id and the first result given for it (null while the first call runs). */
export interface FederationTransactionsTable {
  peer: string;
  txid: string;
  result: string | null;
  created_at: Generated<Date>;
  finished_at: Timestamp | null;
}

/** A job forwarded to a peer (`out`) or run here for one (`in`), keyed by the origin's transaction id. */
export interface FederatedJobsTable {
  direction: "in" | "out";
  peer: string;
  txid: string;
  /** the job here: the client's on the origin, the peer's on the serving site */
  job_id: string;
  model: string;
  status: "running" | "completed" | "failed" | "cancelled";
  prompt_tokens: number | null;
  completion_tokens: number | null;
  error: string | null;
  created_at: Generated<Date>;
  finished_at: Timestamp | null;
  /** out: the serving site's federation receipt (wire JSON) and signature, and whether it held */
  receipt: string | null;
  receipt_signature: string | null;
  /** the receipt's credits when it held: what this site accepts owing the peer */
  receipt_credits: ColumnType<string | null, bigint | string | null, bigint | string | null>;
  receipt_status: "accepted" | "rejected" | null;
  receipt_reason: string | null;
}

export interface MetaTable {
  key: string;
  value: string;
}

/** bigint: read as a string (pg) or a number (PGlite); written as bigint */
type BlockNumber = ColumnType<string | number | bigint, bigint | string, bigint | string>;

/** What every indexed event row has (docs/indexing.md): its log, block and contract. */
export interface ChainEventColumns {
  tx_hash: string;
  log_index: number;
  block_number: BlockNumber;
  /** the block's time, unix seconds */
  timestamp: BlockNumber;
  /** the contract that emitted it, lower case */
  contract: string;
}

export interface CreditPurchasesTable extends ChainEventColumns {
  buyer: string;
  credits: Amount;
  paid: Amount;
  /** the stablecoin, or the zero address for the native coin */
  token: string;
}

export interface EscrowEventsTable extends ChainEventColumns {
  user: string;
  coordinator: string;
  amount: Amount;
}

export interface WithdrawalRequestsTable extends EscrowEventsTable {
  unlock_at: Amount;
}

export interface SettlementBatchesTable extends ChainEventColumns {
  coordinator: string;
  batch_id: Amount;
  earnings_root: string;
  batch_spent: Amount;
  total_earnings: Amount;
  /** how many users it charged */
  users: Amount;
}

export interface SettlementBatchUsersTable extends ChainEventColumns {
  /** the user's place in the settle call */
  position: number;
  user: string;
  coordinator: string;
  cumulative_spent: Amount;
}

export interface SpendShortfallsTable extends ChainEventColumns {
  user: string;
  coordinator: string;
  posted: Amount;
  covered: Amount;
}

export interface ClaimsTable extends ChainEventColumns {
  coordinator: string;
  node: string;
  amount: Amount;
  cumulative: Amount;
}

export interface AcceptancesTable extends ChainEventColumns {
  origin: string;
  server: string;
  cumulative: Amount;
}

export interface SiteRegistrationsTable extends ChainEventColumns {
  coordinator: string;
  public_key: string;
  key_id: Amount;
  valid_until: Amount;
  url: string;
  metadata: string;
}

export interface SiteUpdatesTable extends ChainEventColumns {
  coordinator: string;
  url: string;
  metadata: string;
}

export interface KeyRenewalsTable extends ChainEventColumns {
  coordinator: string;
  key_id: Amount;
  valid_until: Amount;
}

export interface SiteEventsTable extends ChainEventColumns {
  coordinator: string;
}

export interface EndorsementChangesTable extends ChainEventColumns {
  site: string;
  peer: string;
  endorsed: boolean;
}

export interface RoleChangesTable extends ChainEventColumns {
  role: string;
  account: string;
  sender: string;
  granted: boolean;
}

export interface GovernanceEventsTable extends ChainEventColumns {
  name: string;
  /** name=value pairs, comma-separated (as the subgraph's GovernanceEvent) */
  args: string;
}

export interface IndexerCursorTable {
  id: string;
  /** chain id, contracts and genesis hash: a different chain starts the history over */
  chain: string;
  block_number: BlockNumber;
  block_hash: string;
  updated_at: Timestamp;
}

export interface IndexedBlocksTable {
  block_number: BlockNumber;
  block_hash: string;
}

/** The tables of indexed events, by name. */
export interface ChainHistoryTables {
  credit_purchases: CreditPurchasesTable;
  deposits: EscrowEventsTable;
  withdrawal_requests: WithdrawalRequestsTable;
  withdrawals: EscrowEventsTable;
  settlement_batches: SettlementBatchesTable;
  settlement_batch_users: SettlementBatchUsersTable;
  spend_shortfalls: SpendShortfallsTable;
  claims: ClaimsTable;
  acceptances: AcceptancesTable;
  site_registrations: SiteRegistrationsTable;
  site_updates: SiteUpdatesTable;
  key_renewals: KeyRenewalsTable;
  admissions: SiteEventsTable;
  revocations: SiteEventsTable;
  endorsement_changes: EndorsementChangesTable;
  role_changes: RoleChangesTable;
  governance_events: GovernanceEventsTable;
}

export interface Database extends ChainHistoryTables {
  indexer_cursor: IndexerCursorTable;
  indexed_blocks: IndexedBlocksTable;
  api_keys: ApiKeysTable;
  models: ModelsTable;
  nodes: NodesTable;
  node_sessions: NodeSessionsTable;
  jobs: JobsTable;
  events: EventsTable;
  siwe_nonces: SiweNoncesTable;
  web_sessions: WebSessionsTable;
  ledger_entries: LedgerEntriesTable;
  credit_accounts: CreditAccountsTable;
  receipts: ReceiptsTable;
  settlements: SettlementsTable;
  batch_entries: BatchEntriesTable;
  set_aside_entries: SetAsideEntriesTable;
  meta: MetaTable;
  site_nonces: SiteNoncesTable;
  receipt_proposals: ReceiptProposalsTable;
  coordinator_instances: CoordinatorInstancesTable;
  audits: AuditsTable;
  node_standing: NodeStandingTable;
  federation_nonces: FederationNoncesTable;
  federation_transactions: FederationTransactionsTable;
  federated_jobs: FederatedJobsTable;
  browser_delegations: BrowserDelegationsTable;
}

export type ApiKeyRow = Selectable<ApiKeysTable>;
export type NewJob = Insertable<JobsTable>;
