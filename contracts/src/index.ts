export { CreditLedger, FederationRegistry, MockStablecoin } from "./artifacts.js";
export { type Deployment, type DeployOptions, deployContracts, ROLES } from "./deploy.js";
export { DEV_CHAIN_ID, DEV_CHAIN_SCRIPT, DEV_DEPLOYER_KEY } from "./devChain.js";
