/**
 * The node daemon, worker role: lends this machine to cluster heads of its site. It runs
 * ggml-rpc-server on 127.0.0.1 (tensor cache on) behind the authenticated tunnel, tells the
 * coordinator where the tunnel is, and takes the cluster sessions the coordinator forms for a head,
 * when its own policy serves that head: the head its site daemon picked, or those its owner named.
 * It reports to the coordinator, signed by its node key, the layers each head placed on it as its
 * tunnel end saw them in the RPC stream: a head's split counts only when its members' reports agree.
 * Its owner has the same say as over a solo node (pause, schedule, owner-first): a worker that
 * stops taking work ends its sessions and drops its tunnels, so its heads form their clusters
 * again without it (the coordinator leaves it out while it is unavailable).
 */
import { cpus } from "node:os";
import { join } from "node:path";
import { clusterLayersMessage } from "@sharedllm/protocol";
import type { Logger } from "pino";
import { capabilities, detectHardware } from "../control/capabilities.js";
import type { ControlClient } from "../control/client.js";
import { openControlLink } from "../control/link.js";
import { OwnerControls, type OwnerFirstOptions } from "../daemon/availability.js";
import { parseSchedule } from "../daemon/schedule.js";
import { ensureEngine } from "../engine/build.js";
import { SharedLLMError } from "../errors.js";
import { loadNodeIdentity, type NodeIdentity } from "../identity.js";
import type { Paths } from "../paths.js";
import { type ProgressFactory, silentProgress } from "../progress.js";
import { type RpcServer, startRpcServer } from "./rpcServer.js";
import { layerRun } from "./rpcWatch.js";
import { type LayersSeen, TunnelServer, tunnelIdentity } from "./tunnel.js";

export interface WorkerDaemonOptions {
  paths: Paths;
  coordinatorUrl: string;
  /** PEM certificate(s) to trust for an https coordinator; default: the system's CAs */
  coordinatorCa?: string;
  joinToken: string;
  threads?: number;
  /** where the tunnel listens; default 0.0.0.0 (it is the way in from the LAN) */
  tunnelHost?: string;
  /** default 0: any free port */
  tunnelPort?: number;
  /**
   * the heads this worker lends itself to (node ids): the head its site daemon's clustering picked,
   * or those its owner named; undefined: any head the coordinator's formation names
   */
  heads?: string[];
  /** when the owner lets this machine serve, e.g. "weekdays 17:00-08:00" (default: always) */
  schedule?: string;
  /** start without taking work until resume() */
  paused?: boolean;
  /** owner-first: give the work up while the owner needs the machine; absent: off */
  ownerFirst?: OwnerFirstOptions;
  /** the most memory lent to heads (bytes): the free memory it reports, which caps its layers, is never more */
  maxMemoryBytes?: number;
  logger: Logger;
  progress?: ProgressFactory;
  signal?: AbortSignal;
}

export interface WorkerDaemon {
  nodeId: string;
  rpc: RpcServer;
  tunnel: TunnelServer;
  control: ControlClient;
  /** stop taking work: the sessions end, the heads re-form without this worker */
  pause(): void;
  resume(): void;
  /** leave the site: give the work up, deregister, stop */
  leave(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A relative compute score (multiply-adds per ms on one core, times threads): only ratios between
 * members matter. Counted per millisecond of this process's CPU time, not of the clock, so a
 * machine that is busy for a moment (another member starting up beside it) is not taken for a slow
 * one; the best of five rounds after three for warm-up, since the process's CPU time also counts its
 * compiler and GC threads.
 */
function computeScore(threads: number): number {
  let x = 1.0001;
  const round = () => {
    let ops = 0;
    const start = process.cpuUsage();
    const cpuMs = () => {
      const used = process.cpuUsage(start);
      return (used.user + used.system) / 1_000;
    };
    const giveUpAt = performance.now() + 1_000;
    while (cpuMs() < 20 && performance.now() < giveUpAt) {
      for (let i = 0; i < 100_000; i++) x = x * 1.0000001 + 1e-9;
      ops += 100_000;
    }
    return ops / Math.max(1, cpuMs()) / 1_000;
  };
  // untimed rounds first, so the timed ones run optimised code
  for (let i = 0; i < 3; i++) round();
  let best = 0;
  for (let i = 0; i < 5; i++) best = Math.max(best, round());
  return Math.max(1, Math.round(best * threads + (x > 1e9 ? 1 : 0)));
}

export async function startWorkerDaemon(o: WorkerDaemonOptions): Promise<WorkerDaemon> {
  const progress = o.progress ?? silentProgress;
  if (o.schedule) parseSchedule(o.schedule);
  const identity = (await loadNodeIdentity(o.paths.home)) as NodeIdentity;
  const nodeId = identity.nodeId;
  const log = o.logger.child({ nodeId, role: "worker" });
  const hardware = detectHardware(log);
  const engine = await ensureEngine({ cache: o.paths.cache, progress, signal: o.signal });
  const threads = o.threads ?? Math.max(1, cpus().length);
  const rpc = await startRpcServer({ engine, cache: o.paths.cache, logDir: join(o.paths.home, "logs"), threads });
  const heads = o.heads && new Set(o.heads.map((h) => h.toLowerCase()));
  const tunnel = new TunnelServer({
    identity: tunnelIdentity(identity.account),
    host: o.tunnelHost ?? "0.0.0.0",
    port: o.tunnelPort ?? 0,
    upstream: rpc.address,
    allowHead: heads && ((head) => heads.has(head)),
    onLayers: (seen) =>
      void report(seen).catch((err: Error) => log.error({ err: err.message }, "could not report the layers a head placed here")),
    logger: log,
  });
  /** Tells the coordinator, signed by this node's key, which layers a head placed here: its split is held against it. */
  const report = async (seen: LayersSeen) => {
    const run = layerRun(seen.layers);
    if (!run) return;
    const fields = { sessionId: seen.sessionId, head: seen.head as `0x${string}`, ...run, tensorBytes: seen.tensorBytes };
    const signature = await identity.account.signMessage({ message: clusterLayersMessage({ ...fields, worker: nodeId }) });
    control.sendFrame({ type: "cluster.layers", ...fields, signature });
    const layers = `${run.firstLayer}+${run.layerCount}${run.contiguous ? "" : " with gaps"}`;
    log.info({ head: seen.head, layers, tensorBytes: seen.tensorBytes }, "reported the layers the head placed here");
  };
  try {
    await tunnel.listen();
  } catch (err) {
    await rpc.stop();
    throw new SharedLLMError(
      "config",
      `the tunnel cannot listen on ${o.tunnelHost ?? "0.0.0.0"}:${o.tunnelPort ?? 0}: ${(err as Error).message}; pick another --tunnel-port or --tunnel-host`,
    );
  }
  const speed = computeScore(threads);
  const measured = await capabilities({ home: o.paths.home, cache: o.paths.cache, engine, threads, hardware: await hardware });
  const caps = { ...measured, memoryBytes: Math.min(measured.memoryBytes, o.maxMemoryBytes ?? Number.POSITIVE_INFINITY) };
  const { client: control } = openControlLink({
    coordinatorUrl: o.coordinatorUrl,
    coordinatorCa: o.coordinatorCa,
    joinToken: o.joinToken,
    identity,
    engine,
    role: "worker",
    logger: log,
    hello: () => ({ models: [], slots: 1, capabilities: caps, tunnel: { port: tunnel.port, tls: true, speed } }),
    servesHead: (head) => tunnel.servesHead(head),
    maxMemoryBytes: o.maxMemoryBytes,
    runJob: async (job, send) =>
      send({ type: "job.error", jobId: job.jobId, message: "this node is a cluster worker and runs no jobs itself", retryable: true }),
    loadModel: (frame, reply) =>
      reply({ type: "models", models: [], failed: { model: frame.model, message: "a cluster worker serves no models" } }),
    onClusterFrame: (f, send) => {
      if (f.type !== "tunnel.session") return;
      // a formation that crossed this worker's unavailability on the wire
      if (!owner.availability.accepting) {
        log.info({ head: f.head, reason: owner.availability.reason }, "a cluster session while not taking work: ignored");
        return;
      }
      if (!tunnel.addSession({ id: f.sessionId, head: f.head, expiresAt: f.expiresAt })) {
        log.warn({ head: f.head }, "a cluster session for a head this worker does not serve: ignored");
        return;
      }
      log.info({ head: f.head }, "cluster session from a head");
      send({ type: "tunnel.ready", sessionId: f.sessionId });
    },
  });
  const owner = new OwnerControls({
    apply: (accepting, reason, handOff) => {
      control.setAvailability(accepting, reason, handOff);
      if (handOff) tunnel.endAll();
    },
    schedule: o.schedule,
    paused: o.paused,
    ownerFirst: o.ownerFirst,
    handOffAlways: true,
    logger: log,
  });
  owner.start();
  const stop = async () => {
    owner.stop();
    await control.close();
    await tunnel.close();
    await rpc.stop();
  };
  try {
    await control.start();
  } catch (err) {
    await stop();
    throw err;
  }
  log.info({ tunnelPort: tunnel.port, rpc: rpc.address, speed }, "worker ready");
  return {
    nodeId,
    rpc,
    tunnel,
    control,
    pause: () => owner.pause(),
    resume: () => owner.resume(),
    async leave() {
      owner.drain();
      await control.leave();
      await stop();
    },
    stop,
  };
}
