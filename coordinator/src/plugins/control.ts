/**
 * The coordinator's end of the control channel: nodes dial in over a WebSocket
 * with a bearer credential (a node in this process: an in-process channel, same
 * credential), say hello (protocol version, models, slots), and then carry jobs.
 * A node whose channel closes is removed and its jobs fail cleanly.
 */
import {
  ChannelRefused,
  CLOSE_REFUSED,
  CONTROL_PATH,
  CONTROL_PROTOCOL_VERSION,
  type ControlChannel,
  type CoordinatorFrame,
  channelPair,
  decodeChunkFrame,
  errorBody,
  type Hello,
  MISSED_HEARTBEATS_OFFLINE,
  nodeFrameSchema,
  parseFrame,
  type ServedModel,
} from "@sharedllm/protocol";
import { webSocketChannel } from "@sharedllm/protocol/node";
import type { FastifyBaseLogger, FastifyInstance } from "fastify";
import type { Audits } from "../audits/audits.js";
import { admitModels, type KnownModel } from "../catalogue.js";
import type { Clusters } from "../clusters.js";
import { bearerToken, protocolBearer } from "../credentials.js";
import type { Db } from "../db/database.js";
import { recordEvent } from "../events.js";
import { type Fleet, silentNodes, sweepSchedule } from "../fleet.js";
import { FrameBudget, WRITTEN_FRAMES_PER_MINUTE } from "../frameBudget.js";
import type { Receipts } from "../ledger/receipts.js";
import type { Metrics } from "../metrics.js";
import { ConnectedNode } from "../units.js";
import { delegationOf } from "./browserNodes.js";
import { sessionNode } from "./nodes.js";

export interface ControlPluginOptions {
  db: Db;
  fleet: Fleet;
  clusters: Clusters;
  knownModels: Map<string, KnownModel>;
  heartbeatIntervalMs: number;
  /** counts the nodes' yields to their owners */
  metrics?: Metrics;
  /** where signed work receipts go; absent when the coordinator runs without a ledger */
  receipts?: Receipts;
  /** audits of paid jobs: auditors' answers go there; absent without auditors */
  audits?: Audits;
  /** the GGUF files (sha256) browser nodes may serve, each under its model id; a browser node offering others serves none of them */
  browserModels?: ReadonlyMap<string, string>;
  /** receives the dial for a node in this process: its session token gives it an in-process channel */
  exposeLocalDial?: (dial: LocalDial) => void;
}

/** Opens an in-process control channel for a registered node; throws ChannelRefused for a bad token. */
export type LocalDial = (sessionToken: string) => Promise<ControlChannel>;

declare module "fastify" {
  interface FastifyRequest {
    /** the node whose session token opened this control channel */
    sessionNodeId?: string;
  }
}

/** The served models a heartbeat does not list as loaded; undefined in the usual case of none. */
function notLoaded(node: ConnectedNode, loaded: string[]): Set<string> | undefined {
  if (loaded.length >= node.models.size && [...node.models.keys()].every((m) => loaded.includes(m))) return undefined;
  return new Set([...node.models.keys()].filter((m) => !loaded.includes(m)));
}

export async function controlPlugin(app: FastifyInstance, o: ControlPluginOptions): Promise<void> {
  // a node silent for three heartbeat periods is offline (taken off within them): its jobs fail, its socket closes
  const sweep = sweepSchedule(o.heartbeatIntervalMs, MISSED_HEARTBEATS_OFFLINE);
  const sweeper = setInterval(() => {
    for (const n of silentNodes(o.fleet.list(), Date.now(), sweep.silentMs)) {
      app.log.warn({ nodeId: n.id }, "node missed its heartbeats; marking it offline");
      recordEvent(o.db, app.log, "node.offline", n.id, { reason: "missed heartbeats" });
      o.fleet.remove(n.id, `missed ${MISSED_HEARTBEATS_OFFLINE} heartbeats`);
      n.disconnect("missed heartbeats");
    }
  }, sweep.everyMs);
  app.addHook("onClose", async () => clearInterval(sweeper));
  // at shutdown the whole fleet is recorded as seen now, in one statement, not once per closing socket
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
    const ids = o.fleet.list().map((n) => n.id);
    if (ids.length) await o.db.updateTable("nodes").set({ last_seen_at: new Date() }).where("id", "in", ids).execute();
  });

  app.get(
    CONTROL_PATH,
    {
      websocket: true,
      preValidation: async (req, reply) => {
        // a browser cannot set headers on a WebSocket: its token comes as a subprotocol (CONTROL_BEARER_PROTOCOL)
        const token = bearerToken(req.headers.authorization) ?? protocolBearer(req.headers["sec-websocket-protocol"]);
        const nodeId = token ? await sessionNode(o.db, token) : undefined;
        if (!nodeId) {
          return reply.code(401).send(errorBody("invalid_api_key", "no valid node session: register with the site's join token first"));
        }
        req.sessionNodeId = nodeId;
      },
    },
    (socket, req) =>
      attach(webSocketChannel(socket), {
        nodeId: req.sessionNodeId as string,
        host: (req.socket.remoteAddress ?? "127.0.0.1").replace(/^::ffff:/, ""),
        log: req.log,
      }),
  );

  // a node in this process (`sharedllm up`) skips the loopback WebSocket; registration and frames are the same
  const localChannels = new Set<ControlChannel>();
  o.exposeLocalDial?.(async (token) => {
    if (closing) throw new Error("the coordinator is stopping");
    const nodeId = await sessionNode(o.db, token);
    if (!nodeId) throw new ChannelRefused(401, "no valid node session: register with the site's join token first");
    const [coordinatorEnd, nodeEnd] = channelPair();
    localChannels.add(coordinatorEnd);
    coordinatorEnd.onClose(() => localChannels.delete(coordinatorEnd));
    attach(coordinatorEnd, { nodeId, host: "127.0.0.1", log: app.log });
    return nodeEnd;
  });
  // as closing the server ends every WebSocket
  app.addHook("onClose", async () => {
    for (const c of localChannels) c.close(1001, "coordinator stopping");
  });

  /** Serves one node's control channel, from its hello to its close. */
  function attach(channel: ControlChannel, session: { nodeId: string; host: string; log: FastifyBaseLogger }) {
    const { log } = session;
    const send = (f: CoordinatorFrame) => channel.send(JSON.stringify(f));
    let node: ConnectedNode | undefined;
    /** the handshake: no hello yet, its checks under way (nothing else may come until welcome), or done */
    let greeting: "awaited" | "checking" | "done" = "awaited";
    /** a browser node (a wallet's delegated session key): it serves only the models allowed for browser nodes, alone */
    let browser = false;
    /** the frames the coordinator writes to its database */
    const written = new FrameBudget();
    const refuse = (message: string) => {
      send({ type: "error", message });
      channel.close(CLOSE_REFUSED, message.slice(0, 120));
    };
    // a session that says nothing holds a socket: it must say hello as soon as a node would miss its heartbeats
    const helloWithinMs = o.heartbeatIntervalMs * MISSED_HEARTBEATS_OFFLINE;
    const helloDeadline = setTimeout(() => refuse(`no hello within ${helloWithinMs / 1000} s`), helloWithinMs);
    helloDeadline.unref();
    channel.onClose(() => clearTimeout(helloDeadline));
    channel.onMessage((text) => {
      // a refused channel reads nothing more while its close completes
      if (!channel.open) return;
      // the hot path: one chunk frame per token, no JSON
      const chunk = decodeChunkFrame(text);
      if (chunk) return node ? node.chunk(chunk.jobId, chunk.data, chunk.tokens) : refuse("the first frame must be hello");
      const parsed = parseFrame(nodeFrameSchema, text);
      if (!parsed.ok) return refuse(parsed.reason);
      const frame = parsed.frame;
      if (!node) {
        if (greeting === "checking") return refuse("wait for welcome before sending more frames");
        if (frame.type !== "hello") return refuse("the first frame must be hello");
        greeting = "checking";
        void onHello(frame).then(
          (n) => {
            greeting = "done";
            clearTimeout(helloDeadline);
            node = n;
          },
          (err: Error) => {
            // what a node says is stored (its engine, its models): whatever the database refuses ends this channel, not the coordinator
            log.error({ err, nodeId: session.nodeId }, "taking a node's hello failed");
            refuse("the coordinator could not take this hello; check the node's engine and model names");
          },
        );
        return;
      }
      switch (frame.type) {
        case "heartbeat":
          node.lastSeenAt = Date.now();
          node.heartbeat = frame;
          node.notLoaded = notLoaded(node, frame.loadedModels);
          if (frame.tokensPerSecond > 0) node.tokensPerSecond = frame.tokensPerSecond;
          return node.rankChanged();
        case "availability": {
          if (!written.take(Date.now())) return refuse(`more than ${WRITTEN_FRAMES_PER_MINUTE} availability and models frames in a minute`);
          const handOff = frame.handOff === true && !frame.accepting;
          node.setAvailability(frame.accepting, frame.reason);
          recordEvent(o.db, log, "node.availability", node.id, {
            accepting: frame.accepting,
            reason: frame.reason,
            ...(handOff && { handOff }),
          });
          log.info({ nodeId: node.id, accepting: frame.accepting, reason: frame.reason, handOff }, "node availability changed");
          o.fleet.notify();
          if (!handOff) return;
          // it yields to its owner: its jobs in flight, and those of heads whose split runs on it, go elsewhere
          o.metrics?.yielded(frame.reason);
          node.handOff(frame.reason);
          o.clusters.withdraw(node.id, frame.reason, log);
          return;
        }
        case "models":
          if (!written.take(Date.now())) return refuse(`more than ${WRITTEN_FRAMES_PER_MINUTE} availability and models frames in a minute`);
          if (frame.capabilities) {
            node.capabilities = frame.capabilities;
            node.tokensPerSecond = frame.capabilities.tokensPerSecond;
            node.rankChanged();
          }
          o.fleet.setModels(node, new Map(admitted(frame.models, browser).map((m) => [m.id, m])));
          if (frame.failed) log.warn({ nodeId: node.id, ...frame.failed }, "node could not load a model");
          return void rememberModels([...node.models.values()]).catch((err) => log.error({ err }, "recording models failed"));
        case "leave":
          return void onLeave(node);
        case "job.end":
          return node.end(frame.jobId, frame.usage, frame.resumed);
        case "job.prompt":
          return node.prompted(frame.jobId, frame.promptTokens);
        case "job.error":
          return node.error(frame.jobId, frame);
        case "receipt": {
          const from = node.id;
          if (!o.receipts) return;
          return void o.receipts
            .submit(from as `0x${string}`, frame.receipt, frame.signature as `0x${string}` | null, frame.refused)
            .then((r) =>
              r.accepted
                ? log.debug({ nodeId: from }, "receipt accepted")
                : log.warn({ nodeId: from, reason: r.reason }, "receipt rejected"),
            )
            .catch((err) => log.error({ err, nodeId: from }, "recording a receipt failed"));
        }
        case "cluster.form":
          return void o.clusters.form(node, frame, log);
        case "tunnel.ready":
          return o.clusters.ready(frame.sessionId, node.id);
        case "cluster.plan": {
          const refused = o.clusters.plan(node, frame.members, log);
          if (refused) {
            log.warn({ nodeId: node.id, reason: refused }, "cluster split refused");
            return send({ type: "error", message: `cluster split refused: ${refused}` });
          }
          return;
        }
        case "cluster.layers":
          return void o.clusters.report(node, frame, log);
        case "audit.result":
        case "audit.error": {
          const from = node.id;
          const done = frame.type === "audit.result" ? o.audits?.onResult(from, frame) : o.audits?.onError(from, frame);
          return void done?.catch((err) => log.error({ err, nodeId: from }, "recording an audit failed"));
        }
        case "hello":
          return refuse("hello was already received");
      }
    });
    channel.onClose(() => {
      if (!node) return;
      const id = node.id;
      o.audits?.auditorGone(node);
      if (o.fleet.get(id) === node) {
        o.fleet.remove(id, "control channel closed");
        o.clusters.forget(id);
        log.info({ nodeId: id }, "node disconnected");
      }
      if (closing) return;
      recordEvent(o.db, log, "node.disconnected", id);
      o.db
        .updateTable("nodes")
        .set({ last_seen_at: new Date(node.lastSeenAt) })
        .where("id", "=", id)
        .execute()
        .catch((err) => log.error({ err, nodeId: id }, "recording last seen failed"));
    });

    /** The node's models it may serve here: a pinned model only with the pinned file. */
    function admitted(models: ServedModel[], browser: boolean): ServedModel[] {
      const { admitted, refused } = admitModels(models, o.knownModels);
      for (const r of refused) log.warn({ nodeId: session.nodeId, model: r.id, reason: r.reason }, "node may not serve this model here");
      if (!browser) return admitted;
      // the allowed file under its own name only: a small file offered as another model would take that model's jobs
      const allowed = admitted.filter((m) => o.browserModels?.get(m.sha256) === m.id);
      for (const m of admitted) {
        if (!allowed.includes(m)) log.warn({ nodeId: session.nodeId, model: m.id }, "a browser node may not serve this model here");
      }
      return allowed;
    }

    /**
     * Models served anywhere become known (404 vs 503). What a node says of a model's source is
     * never kept: only the operator's pins say where nodes may pull from.
     */
    async function rememberModels(models: ServedModel[]) {
      for (const m of models) {
        if (o.knownModels.get(m.id)?.source) continue;
        await o.db
          .insertInto("models")
          .values({ id: m.id, sha256: m.sha256, source: null, size_bytes: m.sizeBytes ?? null })
          .onConflict((c) => c.column("id").doUpdateSet({ sha256: m.sha256, size_bytes: m.sizeBytes ?? null }))
          .execute();
        o.knownModels.set(m.id, { id: m.id, sha256: m.sha256, sizeBytes: m.sizeBytes });
      }
    }

    async function onLeave(n: ConnectedNode) {
      o.fleet.remove(n.id, "node left the site");
      await o.db.deleteFrom("node_sessions").where("node_id", "=", n.id).execute();
      log.info({ nodeId: n.id }, "node left the site");
      recordEvent(o.db, log, "node.left", n.id);
      channel.close(1000, "left");
    }

    async function onHello(h: Hello): Promise<ConnectedNode | undefined> {
      const nodeId = session.nodeId;
      if (h.nodeId.toLowerCase() !== nodeId) {
        refuse(`this session belongs to node ${nodeId}, not ${h.nodeId}`);
        return undefined;
      }
      if (h.protocol !== CONTROL_PROTOCOL_VERSION) {
        refuse(
          `control protocol ${h.protocol} is not supported; this coordinator speaks ${CONTROL_PROTOCOL_VERSION}: upgrade the older side`,
        );
        return undefined;
      }
      // a browser node acts for the wallet that delegated to it, and no longer than the delegation
      const delegation = await delegationOf(o.db, nodeId);
      // a node excluded after failed audits while it was registering (docs/verification.md), or its wallet
      const excluded = await o.db
        .selectFrom("node_standing")
        .select("node_id")
        .where("node_id", "in", delegation ? [nodeId, delegation.wallet.toLowerCase()] : [nodeId])
        .where("excluded_at", "is not", null)
        .executeTakeFirst();
      if (excluded) {
        refuse("this node is excluded after failed audits; the coordinator's operator must clear it");
        return undefined;
      }
      browser = delegation !== undefined;
      if (delegation) {
        const ends = setTimeout(
          () => refuse("the wallet's delegation to this tab has expired; start again"),
          delegation.expiresAt.getTime() - Date.now(),
        );
        ends.unref();
        channel.onClose(() => clearTimeout(ends));
      }
      const engine = `${h.engine.tag}-${h.engine.variant}`;
      const now = new Date();
      await o.db
        .insertInto("nodes")
        .values({ id: nodeId, engine, first_seen_at: now, last_seen_at: now })
        .onConflict((c) => c.column("id").doUpdateSet({ engine, last_seen_at: now }))
        .execute();
      const models = admitted(h.models, browser);
      await rememberModels(models);
      if (!channel.open) return undefined;
      const n = new ConnectedNode({
        id: nodeId,
        engine,
        models: new Map(models.map((m) => [m.id, m])),
        slots: h.slots,
        accepting: h.accepting ?? true,
        reason: h.reason,
        capabilities: h.capabilities,
        // a browser node is at the lowest trust: never a cluster member, never an auditor
        role: browser ? "solo" : (h.role ?? "solo"),
        tunnel: browser ? undefined : h.tunnel && { host: session.host, ...h.tunnel },
        auditor: !browser && h.auditor === true,
        send,
        disconnect: (reason, code = CLOSE_REFUSED) => channel.close(code, reason),
      });
      n.suspicion = o.audits?.suspicionOf(nodeId) ?? 0;
      o.fleet.add(n);
      send({ type: "welcome", protocol: CONTROL_PROTOCOL_VERSION, nodeId, heartbeatIntervalMs: o.heartbeatIntervalMs });
      // receipts it has not signed yet (proposed while it was away, or before a restart)
      o.receipts?.resend(nodeId as `0x${string}`).catch((err) => log.error({ err, nodeId }, "re-sending receipt proposals failed"));
      log.info({ nodeId, models: [...n.models.keys()], slots: h.slots }, "node connected");
      recordEvent(o.db, log, "node.connected", nodeId, { models: [...n.models.keys()], slots: h.slots, engine });
      return n;
    }
  }
}
