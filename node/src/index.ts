export { type NodeDaemon, type NodeDaemonOptions, startNodeDaemon } from "./daemon/daemon.js";
export { type Engine, ensureEngine, findEngine } from "./engine/build.js";
export { ModelError } from "./models/modelError.js";
export { DEFAULT_MODEL } from "./models/sources.js";
export { type ModelEntry, ModelStore } from "./models/store.js";
export { type Paths, resolvePaths } from "./paths.js";
