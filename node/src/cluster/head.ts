/**
 * The head of a LAN cluster: it asks the coordinator for its workers (which tells each that this
 * head may dial it), measures the link to each through its tunnel (TLS, both ends proven by their
 * node keys), plans the layer split, and gives
 * llama-server one local endpoint per member (`--rpc`) with the matching `--tensor-split`. This
 * runs before every start of llama-server: when a member dies, llama-server fails, its jobs fail
 * cleanly, and the restart re-forms the cluster over the members that still answer.
 */
import { randomUUID } from "node:crypto";
import type { ClusterMembers, NodeFrame } from "@sharedllm/protocol";
import type { Logger } from "pino";
import { SharedLLMError } from "../errors.js";
import type { ModelLayout } from "../models/gguf.js";
import { type MemberInfo, type Placement, planPlacement, splitArgs } from "./placement.js";
import {
  type DialOptions,
  dialTunnel,
  measureThroughput,
  type TunnelIdentity,
  TunnelProxy,
  type TunnelSigner,
  tunnelIdentity,
} from "./tunnel.js";

export interface ClusterHeadOptions {
  headId: string;
  /** node ids of the workers to split over */
  members: string[];
  layout: ModelLayout;
  send: (frame: NodeFrame) => void;
  /** this head's node key: the workers serve only it */
  signer: TunnelSigner;
  logger: Logger;
  /** how long a cluster session lives; default (and at most) 24 h */
  sessionTtlMs?: number;
  /** a member whose link's round trip is over this is left out of the split; default 5 ms */
  maxRttMs?: number;
  /**
   * a member closed its tunnel while llama-server used it (it stopped, or its owner took the
   * machine back): llama-server should restart, so that the cluster re-forms without it
   */
  onMemberLost?: (member: string) => void;
}

const FORM_TIMEOUT_MS = 15_000;
/** formations tried while members are missing, and the pause between them */
const FORM_ATTEMPTS = 3;
const FORM_RETRY_MS = 2_000;

export class ClusterHead {
  private pending: { sessionId: string; resolve: (m: ClusterMembers) => void } | undefined;
  private proxies: TunnelProxy[] = [];
  plan: Placement | undefined;

  constructor(private readonly o: ClusterHeadOptions) {}

  /** The coordinator's answer to a cluster.form. */
  onMembers(frame: ClusterMembers): void {
    if (this.pending?.sessionId === frame.sessionId) this.pending.resolve(frame);
  }

  private form(): Promise<{ members: ClusterMembers; sessionId: string }> {
    const sessionId = randomUUID();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending = undefined;
        reject(new SharedLLMError("cluster", "the coordinator did not answer the cluster request (is this node connected?)"));
      }, FORM_TIMEOUT_MS);
      this.pending = {
        sessionId,
        resolve: (members) => {
          clearTimeout(timer);
          this.pending = undefined;
          if (members.refused) reject(new SharedLLMError("cluster", `the coordinator would not form the cluster: ${members.refused}`));
          else resolve({ members, sessionId });
        },
      };
      this.o.send({
        type: "cluster.form",
        sessionId,
        members: this.o.members,
        expiresAt: Date.now() + (this.o.sessionTtlMs ?? 24 * 3600_000),
      });
    });
  }

  /** One formation: the coordinator names this head to the workers; each member's link is measured through its tunnel. */
  private async formAndMeasure(identity: TunnelIdentity) {
    const { members, sessionId } = await this.form();
    for (const m of members.missing) this.o.logger.warn({ member: m.nodeId, reason: m.reason }, "cluster member unavailable");
    // the link to each member: the fastest TCP connect of five authenticated dials (the connect is
    // answered by the worker's kernel, so a busy worker process does not pass for a far one)
    const infos: (MemberInfo & ClusterMembers["members"][number] & { dial: DialOptions })[] = [];
    for (const m of members.members) {
      const dial: DialOptions = { host: m.host, port: m.port, sessionId, identity, workerId: m.nodeId };
      let best = Number.POSITIVE_INFINITY;
      try {
        for (let i = 0; i < 5; i++) {
          (await dialTunnel({ ...dial, onConnected: (ms) => (best = Math.min(best, ms)) })).destroy();
        }
      } catch (err) {
        this.o.logger.warn({ member: m.nodeId, err: (err as Error).message }, "cluster member unreachable");
        continue;
      }
      // a measurement that fails once is tried again before the link counts as too narrow
      const throughputMiBps = await measureThroughput(dial)
        .catch(() => measureThroughput(dial))
        .catch((err: Error) => {
          this.o.logger.warn({ member: m.nodeId, err: err.message }, "could not measure the link's throughput");
          return 0;
        });
      infos.push({ ...m, id: m.nodeId, tokensPerSecond: m.speed, rttMs: best, throughputMiBps, dial });
    }
    return { infos };
  }

  /** Forms the cluster anew and returns llama-server's `--rpc`/`--tensor-split` arguments. */
  async prepare(): Promise<string[]> {
    await this.closeProxies();
    // a member that is missing or unreachable for a moment (starting, busy) is asked for again
    // a few times before the cluster forms without it
    // a fresh certificate for every formation, tied to this head's node key on every connection
    const identity = tunnelIdentity(this.o.signer);
    let formed: Awaited<ReturnType<ClusterHead["formAndMeasure"]>>;
    for (let attempt = 1; ; attempt++) {
      formed = await this.formAndMeasure(identity);
      const absent = this.o.members.length - formed.infos.length;
      if (!absent || attempt >= FORM_ATTEMPTS) break;
      this.o.logger.info({ absent, attempt }, "cluster members missing: asking again");
      await new Promise((r) => setTimeout(r, FORM_RETRY_MS));
    }
    const { infos } = formed;
    if (!infos.length)
      throw new SharedLLMError("cluster", "no cluster member is reachable", {
        hint: "check that the workers run (sharedllm node status on each)",
      });
    const plan = planPlacement(this.o.layout, infos, { maxRttMs: this.o.maxRttMs });
    for (const e of plan.excluded) this.o.logger.warn(e, "cluster member left out of the split");
    const ports: number[] = [];
    for (const p of plan.members) {
      const m = infos.find((x) => x.id === p.id) as (typeof infos)[number];
      const proxy = new TunnelProxy(m.dial, this.o.logger, (err) => {
        this.o.logger.warn({ member: m.id, err: err.message }, "lost a cluster member");
        this.o.onMemberLost?.(m.id);
      });
      ports.push(await proxy.listen());
      this.proxies.push(proxy);
    }
    this.plan = plan;
    this.o.send({
      type: "cluster.plan",
      members: plan.members.map((m) => {
        const info = infos.find((x) => x.id === m.id);
        return {
          nodeId: m.id,
          firstLayer: m.firstLayer,
          layerCount: m.layerCount,
          shareBps: m.shareBps,
          speed: info?.tokensPerSecond,
          rttMs: info?.rttMs,
          throughputMiBps: info?.throughputMiBps,
        };
      }),
    });
    this.o.logger.info({ split: plan.members.map((m) => `${m.id}:${m.firstLayer}+${m.layerCount}`) }, "cluster formed");
    // every layer on the member the plan names (the members' own reports must match it), the
    // output head here
    return ["--rpc", ports.map((p) => `127.0.0.1:${p}`).join(","), ...splitArgs(plan)];
  }

  private async closeProxies() {
    for (const p of this.proxies) await p.close();
    this.proxies = [];
  }

  close(): Promise<void> {
    return this.closeProxies();
  }
}
