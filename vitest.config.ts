import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: [
      "protocol/src/**/*.test.ts",
      "coordinator/src/**/*.test.ts",
      "node/src/**/*.test.ts",
      "cli/src/**/*.test.ts",
      "test/**/*.test.ts",
      "contracts/test/**/*.test.ts",
      "sdk/*.test.ts",
      "sdk/typescript/test/**/*.test.ts",
      "subgraph/test/**/*.test.ts",
    ],
    // builds the engine and fetches the default model once, before any test runs
    globalSetup: ["test/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // two cores: test files with real llama-servers would only fight for them, and
    // timing-sensitive checks (cancellation, restarts) would flake; files run one by one
    fileParallelism: false,
  },
});
