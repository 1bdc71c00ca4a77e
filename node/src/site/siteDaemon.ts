/**
 * A site member with no per-machine configuration: it discovers its site's peers on the LAN,
 * measures round trips to them, and takes the role the clustering decides: solo (serves the
 * model itself), worker (lends its rpc-server to the head) or head (serves the model split over
 * its workers). Decisions must hold for a debounce period before the role changes, so a
 * flapping link does not thrash the cluster; a head waits until its workers announce themselves
 * as workers before it forms the split.
 */
import { networkInterfaces, totalmem } from "node:os";
import { siteBeaconKey } from "@sharedllm/protocol/node";
import type { Logger } from "pino";
import { DEFAULT_MAX_RTT_MS } from "../cluster/placement.js";
import { startWorkerDaemon, type WorkerDaemon } from "../cluster/worker.js";
import type { OwnerFirstOptions } from "../daemon/availability.js";
import { type NodeDaemon, startNodeDaemon } from "../daemon/daemon.js";
import { loadNodeIdentity, type NodeIdentity } from "../identity.js";
import type { Paths } from "../paths.js";
import type { ProgressFactory } from "../progress.js";
import { DEFAULT_THRESHOLD_MS, type Decision, decideRole, STAY_FACTOR, sameDecision } from "./clustering.js";
import { Discovery } from "./discovery.js";

export interface SiteDaemonOptions {
  paths: Paths;
  coordinatorUrl: string;
  /** PEM certificate(s) to trust for an https coordinator; default: the system's CAs */
  coordinatorCa?: string;
  joinToken: string;
  model: string;
  slots?: number;
  threads?: number;
  /** the owner's say, whatever role the machine takes (see NodeDaemonOptions) */
  schedule?: string;
  paused?: boolean;
  ownerFirst?: OwnerFirstOptions;
  maxMemoryBytes?: number;
  /** unicast discovery targets (expanded `--scan` ranges), for networks that drop multicast */
  scanTargets?: string[];
  discoveryPort?: number;
  /** multicast group; null: no multicast */
  group?: string | null;
  broadcast?: string;
  /** round trip under which peers cluster; default 2 ms */
  thresholdMs?: number;
  /** how long a new decision must hold before the role changes; default 6 s */
  debounceMs?: number;
  beaconIntervalMs?: number;
  logger: Logger;
  progress?: ProgressFactory;
  signal?: AbortSignal;
}

export interface SiteDaemon {
  nodeId: string;
  discovery: Discovery;
  role(): Decision["role"];
  decision(): Decision | undefined;
  /** stop taking work in whatever role (jobs in flight are handed off), and start each new role paused */
  pause(): void;
  resume(): void;
  /** leave the site: the current role leaves (a solo node or head finishes its jobs first), then stop */
  leave(): Promise<void>;
  stop(): Promise<void>;
}

export async function startSiteDaemon(o: SiteDaemonOptions): Promise<SiteDaemon> {
  const identity = (await loadNodeIdentity(o.paths.home)) as NodeIdentity;
  const nodeId = identity.nodeId;
  const log = o.logger.child({ nodeId, part: "site" });
  let current: { decision: Decision; daemon: NodeDaemon | WorkerDaemon; since: number } | undefined;
  let switching: Promise<void> | undefined;
  let paused = o.paused ?? false;
  const discovery = new Discovery({
    key: siteBeaconKey(o.joinToken),
    signer: identity.account,
    info: () => ({ memoryBytes: totalmem(), role: current?.decision.role }),
    port: o.discoveryPort,
    group: o.group,
    broadcast: o.broadcast,
    targets: o.scanTargets,
    intervalMs: o.beaconIntervalMs,
    logger: log,
  });
  await discovery.start();

  const common = {
    paths: o.paths,
    coordinatorUrl: o.coordinatorUrl,
    coordinatorCa: o.coordinatorCa,
    joinToken: o.joinToken,
    threads: o.threads,
    schedule: o.schedule,
    ownerFirst: o.ownerFirst,
    maxMemoryBytes: o.maxMemoryBytes,
    logger: o.logger,
    progress: o.progress,
    signal: o.signal,
  };
  const run = async (d: Decision): Promise<NodeDaemon | WorkerDaemon> => {
    // a worker lends itself only to the head its own clustering picked
    if (d.role === "worker") return startWorkerDaemon({ ...common, paused, heads: [d.head] });
    // the split leaves out no member for a round trip the clustering keeps it for: a head measures
    // its links while workers load their engines, and one slow moment must not drop a member for good
    const maxRttMs = Math.max(DEFAULT_MAX_RTT_MS, (o.thresholdMs ?? DEFAULT_THRESHOLD_MS) * STAY_FACTOR);
    return startNodeDaemon({
      ...common,
      paused,
      model: o.model,
      slots: o.slots,
      cluster: d.role === "head" ? { members: d.workers, maxRttMs } : undefined,
    });
  };
  const apply = async (d: Decision) => {
    log.info({ role: d.role, head: d.head, workers: d.workers }, "taking a new role");
    await current?.daemon.stop();
    current = undefined;
    current = { decision: d, daemon: await run(d), since: Date.now() };
    // paused while the role was starting
    if (paused) current.daemon.pause();
  };
  const debounceMs = o.debounceMs ?? 6_000;
  // a head forms its split once its workers say they are workers
  const workersReady = (d: Decision) => d.workers.every((w) => discovery.peers.get(w)?.role === "worker");
  /** Workers of the decision that the head's split neither placed nor left out on purpose (unreachable when it formed). */
  const unformed = (d: Decision): string[] => {
    const plan = current && "cluster" in current.daemon ? current.daemon.cluster?.plan : undefined;
    if (!plan) return [];
    const formed = new Set([...plan.members, ...plan.excluded].map((m) => m.id));
    return d.workers.filter((w) => !formed.has(w));
  };

  const decide = (): Decision => {
    const view = discovery.view();
    const self = { nodeId, address: ownAddress(view[0]?.address), memoryBytes: totalmem() };
    return decideRole(
      self,
      view.map((p) => ({ nodeId: p.nodeId, address: p.address, memoryBytes: p.memoryBytes, rttMs: p.rttMs })),
      o.thresholdMs,
      current?.decision,
    );
  };
  let pending: { decision: Decision; since: number } | undefined;
  const evaluate = () => {
    if (switching) return;
    const d = decide();
    if (current && sameDecision(current.decision, d)) {
      pending = undefined;
      // a worker that was restarting when the head formed is taken in once it is back
      const missed = d.role === "head" && Date.now() - current.since >= debounceMs ? unformed(d) : [];
      if (!missed.length || !workersReady(d)) return;
      log.info({ workers: missed }, "forming the cluster again to take in workers that were unreachable");
    } else {
      if (!sameDecision(pending?.decision, d)) {
        pending = { decision: d, since: Date.now() };
        const links = Object.fromEntries(
          discovery.view().map((p) => [p.nodeId, p.rttMs === undefined ? "unmeasured" : `${p.rttMs.toFixed(2)} ms`]),
        );
        log.info({ role: d.role, head: d.head, workers: d.workers, links }, "the cluster looks different: waiting to see that it holds");
      }
      if (Date.now() - (pending?.since ?? 0) < debounceMs) return;
      if (d.role === "head" && !workersReady(d)) return;
      pending = undefined;
    }
    switching = apply(d)
      .catch((err: Error) => log.error({ err: err.message, role: d.role }, "could not take the role; will retry"))
      .finally(() => {
        switching = undefined;
      });
  };
  // the first role: solo until the peers are measured
  await apply({ role: "solo", head: nodeId, workers: [] });
  const timer = setInterval(evaluate, 500);
  return {
    nodeId,
    discovery,
    role: () => current?.decision.role ?? "solo",
    decision: () => current?.decision,
    pause() {
      paused = true;
      current?.daemon.pause();
    },
    resume() {
      paused = false;
      current?.daemon.resume();
    },
    async leave() {
      clearInterval(timer);
      await switching;
      discovery.stop();
      await current?.daemon.leave();
    },
    async stop() {
      clearInterval(timer);
      await switching;
      discovery.stop();
      await current?.daemon.stop();
    },
  };
}

/** This machine's IPv4 address on the peers' network (longest common prefix with a peer's address). */
function ownAddress(peer: string | undefined): string {
  const mine = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a && a.family === "IPv4" && !a.internal)
    .map((a) => (a as { address: string }).address);
  if (!peer) return mine[0] ?? "127.0.0.1";
  const common = (a: string) => {
    const x = a.split(".");
    const y = peer.split(".");
    let n = 0;
    while (n < 4 && x[n] === y[n]) n++;
    return n;
  };
  return mine.sort((a, b) => common(b) - common(a))[0] ?? "127.0.0.1";
}
