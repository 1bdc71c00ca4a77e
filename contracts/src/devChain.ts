import { fileURLToPath } from "node:url";

/** Chain id of the local dev chain (Hardhat's default). */
export const DEV_CHAIN_ID = 31337;

/**
 * The first of the dev chain's well-known, publicly listed test accounts ("test test ... junk").
 * It only ever holds dev-chain coins; never use it on a real network.
 */
export const DEV_DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80" as const;

/** Script that runs the dev chain: `node --import tsx DEV_CHAIN_SCRIPT <host> <port>`. */
export const DEV_CHAIN_SCRIPT = fileURLToPath(new URL("../scripts/devChain.ts", import.meta.url));
