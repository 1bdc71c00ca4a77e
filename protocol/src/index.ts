/**
 * What runs anywhere, the browser included: wire types and their zod schemas, EIP-712 types,
 * the error catalog, the coordinator's response shapes. Parts that need node: modules are in
 * the `/node` entry (node.ts).
 */
export * from "./browserNode.js";
export * from "./channel.js";
export * from "./control.js";
export * from "./errors.js";
export * from "./federation.js";
export * from "./history.js";
export * from "./ledger.js";
export * from "./openai.js";
export * from "./receiptSigner.js";
export * from "./registration.js";
export * from "./responses.js";
export * from "./sse.js";
