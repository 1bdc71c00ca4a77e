import { configDefaults, defineConfig } from "vitest/config";

/**
 * What a run on PostgreSQL (DATABASE_URL set: .ci/run's second run) leaves out: the files whose
 * subject is not the coordinator's storage (the node, the browser, the CLI, the protocol, the
 * contracts and the subgraph, and what the coordinator does with nodes and clients without
 * touching more of the database than any other test). They run once, on PGlite. Some files
 * still skip themselves on PostgreSQL, with their reason (up, telemetry, the multi-host and Python
 * SDK tests); they could be listed here instead.
 */
const NOT_STORAGE = [
  "protocol/src/**",
  "node/src/**",
  "cli/src/**",
  "contracts/test/**",
  "sdk/typescript/test/**",
  "subgraph/test/**",
  "test/e2e/browserNode.test.ts",
  "test/e2e/modelLoad.test.ts",
  "test/e2e/nodeControl.test.ts",
  "test/e2e/ownerFirst.test.ts",
  "test/e2e/portal.test.ts",
  "test/e2e/tls.test.ts",
];

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
    exclude: [...configDefaults.exclude, ...(process.env.DATABASE_URL ? NOT_STORAGE : [])],
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
