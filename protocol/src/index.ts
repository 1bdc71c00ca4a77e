export * from "./control.js";
export * from "./errors.js";
export * from "./openai.js";
export * from "./siteAuth.js";
