export { type ApiKeyInfo, ApiKeyVerifier, createApiKey } from "./apiKeys.js";
export { loadThresholds, THRESHOLDS_FILE, type ThresholdsFile, thresholdsFor, UNCALIBRATED } from "./audits/thresholds.js";
export {
  type Figures,
  figuresOf,
  judge,
  type Sampling,
  samplingOf,
  type Thresholds,
  type Verdict,
} from "./audits/verdict.js";
export type { KnownModel, PinnedModel } from "./catalogue.js";
export {
  BROWSER_MODEL_CAP_BYTES,
  type Coordinator,
  type CoordinatorOptions,
  DEFAULT_RATE_LIMITS,
  type IndexerSettings,
  type RateLimits,
  startCoordinator,
} from "./coordinator.js";
export { browserLinkToken, hashSecret } from "./credentials.js";
export { type Db, openDatabase } from "./db/database.js";
export type { Database } from "./db/schema.js";
export {
  DEFAULT_FEDERATION_REFRESH_MS,
  Federation,
  type FederationOptions,
  type Inbound,
  type PeerCutOff,
  type VerifiedPeer,
} from "./federation/federation.js";
export { pairKey } from "./federation/pairKey.js";
export { type FederationPluginOptions, federationPlugin, REFUSAL_CODES } from "./federation/plugin.js";
export { FEDERATION_HEADERS, type Refusal, signRequest } from "./federation/signature.js";
export { FederationNonces, FederationTransactions } from "./federation/store.js";
export { type NodeView, pickNode, type SchedulingPolicy } from "./fleet.js";
export type { IndexerStatus } from "./indexer/indexer.js";
export { type ChainOptions, LedgerChain } from "./ledger/chain.js";
export { DEFAULT_PRICING, type Price, type Pricing } from "./ledger/metering.js";
export { type SettlementOptions, Settler } from "./ledger/settlement.js";
export { optionalRoutesSpec } from "./optionalRoutesSpec.js";
export type { BrowserBlob } from "./plugins/browserNodes.js";
export { NODE_HEADER } from "./plugins/sse.js";
