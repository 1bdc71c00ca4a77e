import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["protocol/src/**/*.test.ts", "coordinator/src/**/*.test.ts", "node/src/**/*.test.ts", "test/**/*.test.ts"],
    // builds the engine and fetches the default model once, before any test runs
    globalSetup: ["test/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // two cores: real llama-servers in parallel files would only fight for them
    maxWorkers: 2,
  },
});
