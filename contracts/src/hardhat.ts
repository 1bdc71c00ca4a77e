import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import type { HardhatViemHelpers } from "@nomicfoundation/hardhat-viem/types.js";
import type { HardhatRuntimeEnvironment } from "hardhat/types/index.js";
import { register } from "tsx/cjs/api";

export type Hardhat = HardhatRuntimeEnvironment & { viem: HardhatViemHelpers };

/**
 * Hardhat 2 loads hardhat.config.ts with require() and this package is ESM: tsx's CommonJS hook
 * compiles the config, so neither ts-node nor the hardhat CLI is needed.
 */
export function loadHardhat(): Hardhat {
  register();
  process.env.HARDHAT_CONFIG ??= fileURLToPath(new URL("../../hardhat.config.ts", import.meta.url));
  return createRequire(import.meta.url)("hardhat");
}
