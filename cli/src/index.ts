/**
 * What tests and benches use of the CLI package: the dev chain and its clients, and the
 * arguments and unit `site join` runs its daemon with. The command itself is `bin/sharedllm.js`.
 */
export { chainClients, DEV_WEI_PER_CREDIT, deployDevContracts, signInWithEthereum, startDevChain } from "./chain.js";
export { daemonArgs, serviceUnit } from "./site.js";
