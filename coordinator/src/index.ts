export { type ApiKeyInfo, ApiKeyVerifier, createApiKey } from "./apiKeys.js";
export type { KnownModel, PinnedModel } from "./catalogue.js";
export { type Coordinator, type CoordinatorOptions, DEFAULT_RATE_LIMITS, type RateLimits, startCoordinator } from "./coordinator.js";
export { hashSecret } from "./credentials.js";
export type { Db } from "./db/database.js";
export { type NodeView, pickNode, type SchedulingPolicy } from "./fleet.js";
export type { ChainOptions } from "./ledger/chain.js";
export { DEFAULT_PRICING, type Price, type Pricing } from "./ledger/metering.js";
export type { SettlementOptions } from "./ledger/settlement.js";
