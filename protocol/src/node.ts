/**
 * `@sharedllm/protocol/node`: the parts that run only in Node.js (node:crypto and Buffers): site
 * request signing, LAN beacons, a `ws` WebSocket as a control channel.
 */
export * from "./beacon.js";
export * from "./siteAuth.js";
export * from "./webSocketChannel.js";
