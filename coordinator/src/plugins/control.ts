/**
 * The coordinator's end of the control channel: nodes dial in over a WebSocket
 * with a bearer credential, say hello (protocol version, models, slots), and then
 * carry jobs. A node whose socket closes is removed and its jobs fail cleanly.
 */
import { timingSafeEqual } from "node:crypto";
import {
  CLOSE_REFUSED,
  CONTROL_PATH,
  CONTROL_PROTOCOL_VERSION,
  type CoordinatorFrame,
  decodeChunkFrame,
  errorBody,
  type Hello,
  nodeFrameSchema,
} from "@sharedllm/protocol";
import type { FastifyInstance } from "fastify";
import type { WebSocket } from "ws";
import type { z } from "zod";
import type { Db } from "../db/database.js";
import type { ConnectedNode, Fleet } from "../fleet.js";

export interface ControlPluginOptions {
  db: Db;
  fleet: Fleet;
  knownModels: Set<string>;
  /** the credential nodes present on the upgrade */
  nodeToken: string;
}

export async function controlPlugin(app: FastifyInstance, o: ControlPluginOptions): Promise<void> {
  const expected = Buffer.from(o.nodeToken);
  app.get(
    CONTROL_PATH,
    {
      websocket: true,
      preValidation: async (req, reply) => {
        const got = Buffer.from(/^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? "")?.[1] ?? "");
        if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
          return reply.code(401).send(errorBody("invalid_api_key", "this node's token is not valid for this coordinator"));
        }
      },
    },
    (socket, req) => {
      const send = (f: CoordinatorFrame) => socket.send(JSON.stringify(f));
      let node: ConnectedNode | undefined;
      const refuse = (message: string) => {
        send({ type: "error", message });
        socket.close(CLOSE_REFUSED, message.slice(0, 120));
      };
      socket.on("message", (data: Buffer) => {
        const text = data.toString("utf8");
        // the hot path: one chunk frame per token, no JSON
        const chunk = decodeChunkFrame(text);
        if (chunk) return node ? o.fleet.chunk(node.id, chunk.jobId, chunk.data) : refuse("the first frame must be hello");
        let frame: z.infer<typeof nodeFrameSchema>;
        try {
          const parsed = nodeFrameSchema.safeParse(JSON.parse(text));
          if (!parsed.success) return refuse(`malformed frame: ${parsed.error.issues[0]?.message ?? "invalid"}`);
          frame = parsed.data;
        } catch {
          return refuse("frames must be JSON");
        }
        if (!node) {
          if (frame.type !== "hello") return refuse("the first frame must be hello");
          void onHello(socket, frame).then((n) => {
            node = n;
          });
          return;
        }
        switch (frame.type) {
          case "job.end":
            return o.fleet.end(node.id, frame.jobId, frame.usage);
          case "job.result":
            return o.fleet.result(node.id, frame.jobId, frame.body);
          case "job.error":
            return o.fleet.error(node.id, frame.jobId, frame);
          case "hello":
            return refuse("hello was already received");
        }
      });
      socket.on("close", () => {
        if (node && o.fleet.get(node.id) === node) {
          o.fleet.remove(node.id, "control channel closed");
          req.log.info({ nodeId: node.id }, "node disconnected");
        }
      });

      async function onHello(ws: WebSocket, h: Hello): Promise<ConnectedNode | undefined> {
        if (h.protocol !== CONTROL_PROTOCOL_VERSION) {
          refuse(
            `control protocol ${h.protocol} is not supported; this coordinator speaks ${CONTROL_PROTOCOL_VERSION}: upgrade the older side`,
          );
          return undefined;
        }
        const engine = `${h.engine.tag}-${h.engine.variant}`;
        const now = new Date();
        await o.db
          .insertInto("nodes")
          .values({ id: h.nodeId, engine, first_seen_at: now, last_seen_at: now })
          .onConflict((c) => c.column("id").doUpdateSet({ engine, last_seen_at: now }))
          .execute();
        for (const m of h.models) {
          await o.db
            .insertInto("models")
            .values({ id: m.id, sha256: m.sha256 })
            .onConflict((c) => c.column("id").doNothing())
            .execute();
          o.knownModels.add(m.id);
        }
        if (ws.readyState !== ws.OPEN) return undefined;
        const n: ConnectedNode = {
          id: h.nodeId,
          engine,
          models: new Map(h.models.map((m) => [m.id, m])),
          slots: h.slots,
          active: 0,
          coolingUntil: 0,
          jobs: new Map(),
          connectedAt: Date.now(),
          send,
        };
        o.fleet.add(n);
        send({ type: "welcome", protocol: CONTROL_PROTOCOL_VERSION, nodeId: h.nodeId });
        req.log.info({ nodeId: h.nodeId, models: [...n.models.keys()], slots: h.slots }, "node connected");
        return n;
      }
    },
  );
}
