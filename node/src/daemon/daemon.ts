/**
 * The node daemon, solo role: makes sure the engine and the model are here,
 * runs a supervised llama-server for the model on 127.0.0.1, and serves jobs
 * that arrive over the control channel it dials to the coordinator. An auditor
 * also scores other nodes' output of jobs with its own copy of their model.
 */
import { cpus } from "node:os";
import { join } from "node:path";
import {
  type AuditStart,
  type Capabilities,
  type ControlChannel,
  type NodeFrame,
  promptHash,
  type ServedModel,
  UNTOLD_TOKEN,
} from "@sharedllm/protocol";
import type { Logger } from "pino";
import { ClusterHead } from "../cluster/head.js";
import { capabilities, detectHardware, measureSpeed } from "../control/capabilities.js";
import type { ControlClient } from "../control/client.js";
import { openControlLink } from "../control/link.js";
import { type Engine, ensureEngine } from "../engine/build.js";
import { type LlamaServer, startLlamaServer } from "../engine/llamaServer.js";
import { Scorer } from "../engine/scorer.js";
import { SharedLLMError } from "../errors.js";
import { loadNodeIdentity, type NodeIdentity } from "../identity.js";
import { estimateServingMemory, readModelLayout } from "../models/gguf.js";
import { ModelError } from "../models/modelError.js";
import { refuseLoad } from "../models/pins.js";
import { parseSource } from "../models/sources.js";
import { type ModelEntry, ModelStore } from "../models/store.js";
import type { Paths } from "../paths.js";
import { type ProgressFactory, silentProgress } from "../progress.js";
import { runAudit } from "./auditRunner.js";
import { OwnerControls, type OwnerFirstOptions } from "./availability.js";
import { EngineUnreachable } from "./engineCalls.js";
import { EngineConnections } from "./engineConnection.js";
import { runJob } from "./jobRunner.js";
import { parseSchedule } from "./schedule.js";
import { cheatFrame, testCheat } from "./testCheats.js";
import { Throughput } from "./throughput.js";

/** How long a job waits for a restarting llama-server before it is handed back. */
const ENGINE_WAIT_MS = 30_000;
const GiB = 2 ** 30;

export interface NodeDaemonOptions {
  paths: Paths;
  coordinatorUrl: string;
  /** PEM certificate(s) to trust for an https coordinator; default: the system's CAs */
  coordinatorCa?: string;
  /** a coordinator in this process: its in-process control channel instead of the WebSocket */
  dialControl?: (sessionToken: string) => Promise<ControlChannel>;
  /** the site's join token (signs the registration) */
  joinToken: string;
  /** model id in the store, or a source to pull (`default`, `hf:...`, a path) */
  model: string;
  /** parallel jobs; default 2 */
  slots?: number;
  /** context tokens per slot; default 4096 */
  contextPerSlot?: number;
  threads?: number;
  /** extra llama-server arguments */
  engineArgs?: string[];
  /** when the owner lets this machine serve, e.g. "weekdays 17:00-08:00" (default: always) */
  schedule?: string;
  /** start without taking jobs until resume() */
  paused?: boolean;
  /** owner-first: yield (hand jobs in flight off) while the owner needs the machine; absent: off */
  ownerFirst?: OwnerFirstOptions;
  /** cap on the memory the node's engines may use, bytes (weights + KV cache); default: none */
  maxMemoryBytes?: number;
  /**
   * head role: split the model over these workers (node ids) through RPC tunnels; `maxRttMs`:
   * the round trip over which a member is left out of the split (default 5 ms)
   */
  cluster?: { members: string[]; maxRttMs?: number };
  /**
   * offer to audit other nodes' jobs (docs/verification.md): the coordinator sends audits to a
   * node it trusts for it; without this, the node refuses them
   */
  auditor?: boolean;
  logger: Logger;
  progress?: ProgressFactory;
  signal?: AbortSignal;
}

interface Served {
  entry: ModelEntry;
  llama: LlamaServer;
  connections: EngineConnections;
  /** estimated memory of this engine (0 when no cap is set) */
  memoryBytes: number;
}

export interface NodeDaemon {
  nodeId: string;
  /** the model this node serves */
  modelId: string;
  engine: Engine;
  /** the llama-server of the model the node started with */
  llama: LlamaServer;
  /** the cluster this node heads, if it is a head */
  cluster?: ClusterHead;
  /** the models served now (the start model and any loaded on request) */
  models(): string[];
  control: ControlClient;
  /** stop taking jobs and hand the jobs in flight off (the owner wants the machine) */
  pause(): void;
  resume(): void;
  /** stop taking new jobs for good; jobs in flight finish (see control.drained) */
  drain(): void;
  /** drain (no new jobs, wait for jobs in flight up to timeoutMs), deregister, stop */
  leave(timeoutMs?: number): Promise<{ drained: boolean }>;
  /** stop at once: jobs in flight fail */
  stop(): Promise<void>;
}

export async function startNodeDaemon(o: NodeDaemonOptions): Promise<NodeDaemon> {
  const progress = o.progress ?? silentProgress;
  if (o.auditor && o.cluster) {
    throw new SharedLLMError("config", "a cluster head cannot audit: its model is split over other machines; drop --auditor");
  }
  if (o.schedule) parseSchedule(o.schedule);
  // GPU detection loads node-llama-cpp's native addon (seconds): overlap it with the rest
  const hardware = detectHardware(o.logger);
  const identity = (await loadNodeIdentity(o.paths.home)) as NodeIdentity;
  const nodeId = identity.nodeId;
  const engine = await ensureEngine({ cache: o.paths.cache, progress, signal: o.signal });
  const store = new ModelStore(o.paths.cache);
  const model = (await store.get(o.model)) ?? (await store.pull(o.model, { progress, signal: o.signal }));
  const slots = o.slots ?? 2;
  const contextPerSlot = o.contextPerSlot ?? 4096;
  const threads = o.threads ?? Math.max(1, cpus().length);
  const log = o.logger.child({ nodeId });
  // a cluster head splits its model over workers (llama.cpp RPC through tunnels)
  const head =
    o.cluster &&
    new ClusterHead({
      headId: nodeId,
      members: o.cluster.members,
      maxRttMs: o.cluster.maxRttMs,
      layout: await readModelLayout(store.blobPath(model.sha256), slots * contextPerSlot),
      send: (f) => control.sendFrame(f),
      signer: identity.account,
      logger: o.logger.child({ nodeId, role: "head" }),
      // re-formed over the members still there
      onMemberLost: () => served.get(model.id)?.llama.supervisor.restart(),
    });
  /** every model this node serves, each on its own supervised llama-server */
  const served = new Map<string, Served>();
  const cheat = testCheat();
  if (cheat) log.warn({ cheat: cheat.kind }, "SHAREDLLM_TEST_CHEAT is set: this node cheats (for tests of audits only)");
  const startServing = async (entry: ModelEntry): Promise<Served> => {
    // the estimate reads GGUF metadata: only worth it when the owner set a cap
    const need = o.maxMemoryBytes === undefined ? 0 : await estimateServingMemory(store.blobPath(entry.sha256), slots * contextPerSlot);
    const used = [...served.values()].reduce((sum, s) => sum + s.memoryBytes, 0);
    if (o.maxMemoryBytes !== undefined && used + need > o.maxMemoryBytes) {
      throw new SharedLLMError(
        "config",
        `${entry.id} needs about ${(need / GiB).toFixed(2)} GiB with ${slots} slots of ${contextPerSlot} tokens` +
          `${used ? ` on top of ${(used / GiB).toFixed(2)} GiB in use` : ""}, over the ${(o.maxMemoryBytes / GiB).toFixed(2)} GiB cap; ` +
          "raise --max-memory, lower --slots, or pick a smaller model",
      );
    }
    const llama = await startLlamaServer({
      engine,
      modelId: entry.id,
      modelPath: cheat?.kind === "model" ? cheat.path : store.blobPath(entry.sha256),
      slots,
      contextPerSlot,
      threads,
      logDir: join(o.paths.home, "logs"),
      extraArgs: o.engineArgs,
      // the start model of a head runs split over its cluster, re-formed before every (re)start
      prepareArgs: head && entry.id === model.id ? () => head.prepare() : undefined,
    });
    llama.supervisor.on("exit", (code, signal) => log.warn({ model: entry.id, code, signal }, "llama-server exited; restarting"));
    llama.supervisor.on("ready", () => log.info({ model: entry.id, url: llama.url }, "llama-server ready"));
    const s: Served = { entry, llama, connections: new EngineConnections(llama.port, `Bearer ${llama.apiKey}`), memoryBytes: need };
    served.set(entry.id, s);
    return s;
  };
  /**
   * An auditor's engines for audits: one llama-server per model file, with one slot, started on
   * the model's first audit. Audits get an engine of their own so that they never take a slot
   * from the node's jobs, and no job evicts an audit's cached prefix between two of its steps
   * (the rest of the output would then go in as a batch, with other rounding). The weights are
   * mapped from the same file, so the second engine costs its context and compute buffers.
   */
  const auditEngines = new Map<string, Promise<Served>>();
  const auditEngine = (entry: ModelEntry): Promise<Served> => {
    let started = auditEngines.get(entry.sha256);
    if (!started) {
      started = startLlamaServer({
        engine,
        modelId: entry.id,
        modelPath: store.blobPath(entry.sha256),
        slots: 1,
        contextPerSlot,
        threads,
        logDir: join(o.paths.home, "logs"),
        logName: `llama-server-${entry.id}-audits.log`,
        extraArgs: o.engineArgs,
      }).then((llama) => {
        llama.supervisor.on("exit", (code, signal) => log.warn({ model: entry.id, code, signal }, "audit llama-server exited; restarting"));
        return { entry, llama, connections: new EngineConnections(llama.port, `Bearer ${llama.apiKey}`), memoryBytes: 0 };
      });
      auditEngines.set(entry.sha256, started);
      // a failed start is tried again on the next audit
      started.catch(() => auditEngines.delete(entry.sha256));
    }
    return started;
  };
  /**
   * An auditor's one-pass scorers (engine/scorer.ts): one process per model file, started (and
   * compiled, the first time on this machine) on the model's first audit, with the audit engine's
   * context and threads. One that cannot start is logged and not tried again: audits are then
   * replayed token by token on the audit llama-server; one that died is started anew. With extra
   * engine arguments (--engine-args) there is none: the scorer takes llama-server's defaults, and
   * what those arguments change (the KV cache's type, flash attention, ...) it would not match.
   */
  const auditScorers = new Map<string, Promise<Scorer | undefined>>();
  const auditScorer = async (entry: ModelEntry): Promise<Scorer | undefined> => {
    if (o.engineArgs?.length) return undefined;
    const held = auditScorers.get(entry.sha256);
    const scorer = held && (await held);
    if (scorer?.alive || (held && !scorer)) return scorer;
    const started = Scorer.start({ engine, modelPath: store.blobPath(entry.sha256), contextSize: contextPerSlot, threads }).catch(
      (err: Error) => {
        log.warn({ err: err.message, model: entry.id }, "the one-pass scorer did not start; audits are replayed token by token");
        return undefined;
      },
    );
    auditScorers.set(entry.sha256, started);
    return started;
  };
  const stopServing = async () => {
    for (const s of await Promise.all(auditScorers.values())) await s?.stop();
    const audit = await Promise.allSettled(auditEngines.values());
    for (const s of [...served.values(), ...audit.flatMap((a) => (a.status === "fulfilled" ? [a.value] : []))]) {
      s.connections.close();
      await s.llama.supervisor.stop();
    }
  };
  let caps: Capabilities | undefined;
  const throughput = new Throughput();
  const servedModels = (): ServedModel[] =>
    [...served.values()].map(({ entry }) => ({
      id: entry.id,
      sha256: entry.sha256,
      contextSize: contextPerSlot,
      sizeBytes: entry.size,
      // a path on this machine means nothing to another node
      ...(parseSource(entry.source).kind === "local" ? {} : { source: entry.source }),
    }));
  let loading: Promise<void> | undefined;
  /**
   * Runs `task` on a model's engine; a task that arrives while llama-server restarts (or is
   * dying and not yet noticed by its supervisor) waits for it instead of failing. False when the
   * engine did not come back in time or `signal` gave up waiting.
   */
  const onEngine = async (target: Served, signal: AbortSignal, task: () => Promise<void>, what: object): Promise<boolean> => {
    const sup = target.llama.supervisor;
    for (let attempt = 1; ; attempt++) {
      if (!sup.ready && !(await sup.whenReady(ENGINE_WAIT_MS, signal))) return false;
      try {
        await task();
        return true;
      } catch (err) {
        if (!(err instanceof EngineUnreachable) || attempt >= 3) throw err;
        log.warn(what, "llama-server unreachable; waiting for its restart");
        await sup.whenExited(2_000);
      }
    }
  };
  /**
   * Audits run one after another on their engine's one slot (the slot keeps the audit's prefix
   * cached from one token to the next). The thresholds they are judged by were measured that way
   * (coordinator/audit-thresholds.json: a 1-slot auditor, one audit at a time); two audits at
   * once would evict each other's cached prefix, and their tokens would go in as batches, with
   * other rounding where top choices are near-tied (llama.cpp #7052).
   */
  let audits: Promise<void> = Promise.resolve();
  const audit = async (frame: AuditStart, send: (f: NodeFrame) => void, signal: AbortSignal) => {
    if (signal.aborted) return;
    const target = frame.sha256
      ? [...served.values()].find((s) => s.entry.sha256 === frame.sha256)
      : served.get(String(frame.request.model));
    if (!target) {
      const which = frame.sha256 ? `the model file ${frame.sha256}` : String(frame.request.model);
      return send({ type: "audit.error", auditId: frame.auditId, message: `this node does not serve ${which}` });
    }
    let scorer: Served;
    try {
      scorer = await auditEngine(target.entry);
    } catch (err) {
      log.error({ err: (err as Error).message, model: target.entry.id }, "the audit llama-server did not start");
      return send({
        type: "audit.error",
        auditId: frame.auditId,
        message: `the auditor's engine did not start: ${(err as Error).message}`,
      });
    }
    const onePass = await auditScorer(target.entry);
    const run = async () => {
      const method = await runAudit(frame, scorer.connections, send, signal, onePass);
      if (method) log.info({ auditId: frame.auditId, model: target.entry.id, method }, "audit scored");
    };
    if (await onEngine(scorer, signal, run, { auditId: frame.auditId })) return;
    if (!signal.aborted) send({ type: "audit.error", auditId: frame.auditId, message: "the engine is restarting; try again shortly" });
  };
  const { client: control, receipts } = openControlLink({
    coordinatorUrl: o.coordinatorUrl,
    coordinatorCa: o.coordinatorCa,
    dial: o.dialControl,
    joinToken: o.joinToken,
    identity,
    engine,
    role: head ? "head" : "solo",
    logger: log,
    hello: () => ({ models: servedModels(), slots, capabilities: caps, ...(o.auditor && { auditor: true }) }),
    onClusterFrame: (f) => {
      if (f.type === "cluster.members") head?.onMembers(f);
    },
    status: () => ({
      loadedModels: [...served.values()].filter((s) => s.llama.supervisor.ready).map((s) => s.entry.id),
      tokensPerSecond: throughput.tokensPerSecond(),
    }),
    loadModel: (frame, reply) => {
      // one load at a time; the coordinator hears the new model list either way
      loading = (loading ?? Promise.resolve()).then(async () => {
        if (served.has(frame.model)) return reply({ type: "models", models: servedModels() });
        try {
          const held = await store.get(frame.model);
          const refused = refuseLoad(frame, held);
          if (refused) throw new ModelError(refused);
          log.info({ model: frame.model, source: frame.source }, "loading a model the coordinator asked for");
          const entry = held ?? (await store.pull(frame.source, { id: frame.model, sha256: frame.sha256, signal: o.signal }));
          await startServing(entry);
          reply({ type: "models", models: servedModels() });
        } catch (err) {
          log.error({ err: (err as Error).message, model: frame.model }, "loading a model failed");
          reply({ type: "models", models: servedModels(), failed: { model: frame.model, message: (err as Error).message } });
        }
      });
    },
    runJob: async (job, rawSend, signal) => {
      const started = Date.now();
      const target = served.get(String(job.request.model));
      /** the tokens streamed (ids, or UNTOLD_TOKEN): the receipt commits to them; a job given up before its end has that part receipted */
      const streamed: number[] = [];
      let ended = false;
      const servedJob = () => ({ modelSha256: target?.entry.sha256 ?? "", promptHash: promptHash(job.request), output: streamed });
      const send: typeof rawSend = (frame) => {
        // a test-only switch may make this node cheat: it then signs for what it sent
        const f = cheatFrame(cheat, frame);
        if (f.type === "job.chunk") {
          if (typeof f.tokens === "number") for (let i = 0; i < f.tokens; i++) streamed.push(UNTOLD_TOKEN);
          else streamed.push(...f.tokens);
        }
        if (f.type === "job.end") ended = true;
        // failed after streaming some: that part may continue elsewhere, and is receipted
        if (f.type === "job.error" && streamed.length > 0 && target) receipts.recordPart(job.jobId, servedJob());
        if (f.type === "job.error") ended = true;
        if (f.type === "job.end") {
          throughput.record(f.usage.completion_tokens ?? 0, Date.now() - started);
          if (target) receipts.record(job.jobId, servedJob(), f.usage);
        }
        rawSend(f);
      };
      signal.addEventListener(
        "abort",
        () => {
          if (!ended && streamed.length > 0 && target) receipts.recordPart(job.jobId, servedJob());
        },
        { once: true },
      );
      if (!target) {
        send({ type: "job.error", jobId: job.jobId, message: `this node does not serve ${String(job.request.model)}`, retryable: true });
        return;
      }
      if (await onEngine(target, signal, () => runJob(job, target.connections, send, signal), { jobId: job.jobId })) return;
      if (!signal.aborted)
        send({ type: "job.error", jobId: job.jobId, message: "the engine is restarting; try again shortly", retryable: true });
    },
    runAudit: o.auditor
      ? (frame, send, signal) => {
          const turn = audits.then(() => audit(frame, send, signal));
          audits = turn.catch(() => {});
          return turn;
        }
      : undefined,
  });
  // what the owner wants, combined into one availability the coordinator sees
  const owner = new OwnerControls({
    apply: (accepting, reason, handOff) => control.setAvailability(accepting, reason, handOff),
    schedule: o.schedule,
    paused: o.paused,
    ownerFirst: o.ownerFirst,
    logger: log,
  });
  owner.start();
  // a head forms its cluster through the coordinator before its llama-server can start;
  // a solo node connects once it serves, so the coordinator sees its models from the first hello
  let primary: Served;
  try {
    if (head) await control.start();
    primary = await startServing(model);
    caps = await capabilities({
      home: o.paths.home,
      cache: o.paths.cache,
      engine,
      threads,
      hardware: await hardware,
      model: { sha256: model.sha256, measure: () => measureSpeed(primary.llama.url, primary.llama.apiKey) },
    });
    log.info({ tokensPerSecond: caps.tokensPerSecond, gpu: caps.gpu }, "capabilities");
    if (head) control.sendFrame({ type: "models", models: servedModels(), capabilities: caps });
    else await control.start();
  } catch (err) {
    owner.stop();
    await control.close();
    await stopServing();
    await head?.close();
    throw err;
  }
  const llama = primary.llama;
  const stop = async () => {
    owner.stop();
    await control.close();
    await loading;
    await stopServing();
    await head?.close();
  };
  return {
    nodeId,
    modelId: model.id,
    engine,
    llama,
    cluster: head,
    models: () => [...served.keys()],
    control,
    pause: () => owner.pause(),
    resume: () => owner.resume(),
    drain: () => owner.drain(),
    async leave(timeoutMs = 120_000) {
      owner.drain();
      const drained = await control.drained(timeoutMs);
      await control.leave();
      await stop();
      return { drained };
    },
    stop,
  };
}
