export { type Account, type ApiKey, type Earnings, type Ledger, SharedLLM, type SharedLLMOptions } from "./client.js";
export { SharedLLMError } from "./errors.js";
export type { components, paths } from "./schema.js";
