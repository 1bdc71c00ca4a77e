export { CreditLedger, FederationRegistry, MockStablecoin, TimelockController } from "./artifacts.js";
export { DEPLOYMENTS_DIR, DEV_TIMELOCK_DELAY_S, type Deployment, type DeployOptions, deployContracts, ROLES } from "./deploy.js";
export { DEV_CHAIN_ID, DEV_CHAIN_SCRIPT, DEV_DEPLOYER_KEY } from "./devChain.js";
export { executeArgs, type GovernanceCall, governanceCall, scheduleArgs } from "./governance.js";
