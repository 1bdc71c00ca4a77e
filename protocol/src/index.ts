export * from "./beacon.js";
export * from "./channel.js";
export * from "./control.js";
export * from "./errors.js";
export * from "./ledger.js";
export * from "./openai.js";
export * from "./siteAuth.js";
