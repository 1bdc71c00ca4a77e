// Contracts build and in-process EVM for tests. Hardhat 2 (Hardhat 3 needs Node 22), compiled
// offline with the npm solc (solc-js): the subtask override keeps Hardhat from downloading a compiler.
import { createRequire } from "node:module";
import "@nomicfoundation/hardhat-viem/index.js";
import { TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD } from "hardhat/builtin-tasks/task-names.js";
import { subtask } from "hardhat/config.js";
import type { HardhatUserConfig } from "hardhat/types/index.js";

const SOLC_VERSION = "0.8.30";
const require = createRequire(__filename);

subtask(TASK_COMPILE_SOLIDITY_GET_SOLC_BUILD, async (args: { solcVersion: string }, _hre, runSuper) => {
  if (args.solcVersion !== SOLC_VERSION) return runSuper();
  const solc = require("solc") as { version(): string };
  return {
    compilerPath: require.resolve("solc/soljson.js"),
    isSolcJs: true,
    version: SOLC_VERSION,
    longVersion: solc.version().replace(/\.Emscripten.*$/, ""),
  };
});

const config: HardhatUserConfig = {
  solidity: {
    version: SOLC_VERSION,
    settings: { optimizer: { enabled: true, runs: 200 }, evmVersion: "prague" },
  },
  paths: {
    sources: "./contracts/solidity",
    artifacts: "./contracts/.artifacts",
    cache: "./contracts/.cache",
    tests: "./contracts/test",
  },
  networks: {
    hardhat: { chainId: 31337 },
  },
};

export default config;
