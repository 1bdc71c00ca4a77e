/**
 * The node daemon as a library: the llama.cpp engine, the model store, the solo daemon, the LAN
 * cluster roles and the site daemon. The `sharedllm` command (`cli/`) composes these.
 */
export { type RpcServer, startRpcServer } from "./cluster/rpcServer.js";
export { TunnelProxy, TunnelServer, tunnelIdentity } from "./cluster/tunnel.js";
export { startWorkerDaemon, type WorkerDaemon, type WorkerDaemonOptions } from "./cluster/worker.js";
export { ControlClient } from "./control/client.js";
export { RegistrationRefused, registerNode, sessionCredentials } from "./control/registration.js";
export { type Claim, type ClaimScore, onePassClaim, replayClaim, type ScoredClaim, scoreClaim } from "./daemon/auditRunner.js";
export { type NodeDaemon, type NodeDaemonOptions, startNodeDaemon } from "./daemon/daemon.js";
export { EngineConnections } from "./daemon/engineConnection.js";
export { runJob } from "./daemon/jobRunner.js";
export { parseSchedule, ScheduleError } from "./daemon/schedule.js";
export { bundledSource, detectVariant, type Engine, ensureEngine, findEngine } from "./engine/build.js";
export { freePort } from "./engine/freePort.js";
export { type LlamaServer, startLlamaServer } from "./engine/llamaServer.js";
export { ensureQuantizer, requantizedModel } from "./engine/quantize.js";
export { ensureScorer, type RowScore, Scorer, ScorerFailed } from "./engine/scorer.js";
export { Supervisor } from "./engine/supervisor.js";
export { type ErrorCode, SharedLLMError } from "./errors.js";
export { loadKeyFile, loadNodeIdentity, type NodeIdentity } from "./identity.js";
export { isAlive, writeFileAtomic } from "./lock.js";
export { ModelError } from "./models/modelError.js";
export { loadPins } from "./models/pins.js";
export { DEFAULT_MODEL } from "./models/sources.js";
export { type ModelEntry, ModelStore } from "./models/store.js";
export { type Paths, resolvePaths } from "./paths.js";
export { type ProgressFactory, terminalProgress } from "./progress.js";
export { expandCidr } from "./site/discovery.js";
export { type SiteDaemon, type SiteDaemonOptions, startSiteDaemon } from "./site/siteDaemon.js";
