export { type ApiKeyInfo, ApiKeyVerifier, createApiKey } from "./apiKeys.js";
export { type Coordinator, type CoordinatorOptions, startCoordinator } from "./coordinator.js";
export { hashSecret } from "./credentials.js";
export type { Db } from "./db/database.js";
export { type NodeView, pickNode, type SchedulingPolicy } from "./fleet.js";
