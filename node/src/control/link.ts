/**
 * The node's control link, opened the same way by every role (solo, head, worker): a control
 * client that registers with the site's join token (again when the coordinator stops accepting its
 * session), names the node and its engine in every hello, reports load and free memory in every
 * heartbeat, and signs the work receipts the coordinator proposes when they match what was served.
 */
import { cpus, freemem, loadavg } from "node:os";
import type { Heartbeat, Hello } from "@sharedllm/protocol";
import type { Engine } from "../engine/build.js";
import type { NodeIdentity } from "../identity.js";
import { ControlClient, type ControlClientOptions } from "./client.js";
import { ReceiptSigner } from "./receipts.js";
import { sessionCredentials } from "./registration.js";

export interface ControlLinkOptions
  extends Pick<
    ControlClientOptions,
    "coordinatorUrl" | "coordinatorCa" | "dial" | "runJob" | "runAudit" | "loadModel" | "onClusterFrame" | "logger"
  > {
  /** the site's join token (signs the registration) */
  joinToken: string;
  identity: NodeIdentity;
  engine: Engine;
  role: NonNullable<Hello["role"]>;
  /** what the node serves, for each hello */
  hello: () => Pick<Hello, "models" | "slots" | "capabilities" | "tunnel" | "auditor">;
  /** the models ready now and the recent decode speed, for each heartbeat; default: none */
  status?: () => Pick<Heartbeat, "loadedModels" | "tokensPerSecond">;
  /** a worker signs receipts for the jobs of a cluster head it serves (it cannot see their tokens) */
  servesHead?: (head: string) => boolean;
  /** the most memory the owner lends: the free memory reported is never more; default: no cap */
  maxMemoryBytes?: number;
}

export interface ControlLink {
  client: ControlClient;
  /** record each job served here: the coordinator's receipt for it is signed only when it matches */
  receipts: ReceiptSigner;
}

/** Builds the node's control link; `client.start()` dials it. */
export function openControlLink(o: ControlLinkOptions): ControlLink {
  const receipts = new ReceiptSigner(o.identity.account, o.servesHead);
  const client = new ControlClient({
    coordinatorUrl: o.coordinatorUrl,
    coordinatorCa: o.coordinatorCa,
    dial: o.dial,
    credentials: sessionCredentials({
      coordinatorUrl: o.coordinatorUrl,
      coordinatorCa: o.coordinatorCa,
      joinToken: o.joinToken,
      account: o.identity.account,
    }),
    logger: o.logger,
    hello: () => ({ nodeId: o.identity.nodeId, engine: { tag: o.engine.tag, variant: o.engine.variant }, role: o.role, ...o.hello() }),
    status: () => ({
      load: (loadavg()[0] ?? 0) / Math.max(1, cpus().length),
      freeMemoryBytes: Math.min(freemem(), o.maxMemoryBytes ?? Number.POSITIVE_INFINITY),
      ...(o.status?.() ?? { loadedModels: [], tokensPerSecond: 0 }),
    }),
    runJob: o.runJob,
    runAudit: o.runAudit,
    loadModel: o.loadModel,
    onClusterFrame: o.onClusterFrame,
    signReceipt: (frame) => receipts.sign(frame),
  });
  return { client, receipts };
}
