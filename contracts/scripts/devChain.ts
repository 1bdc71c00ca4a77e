// The local EVM dev chain: Hardhat's JSON-RPC node (EDR, in memory) on host:port.
// Usage: node --import tsx contracts/scripts/devChain.ts <host> <port>
import { loadHardhat } from "../src/hardhat.js";

const [hostname = "127.0.0.1", port = "8545"] = process.argv.slice(2);
await loadHardhat().run("node", { hostname, port: Number(port) });
