/** `GET /healthz`: liveness plus what a probe or a user wants to see at a glance. */
import type { FastifyInstance } from "fastify";
import type { Fleet } from "../fleet.js";

export async function healthPlugin(app: FastifyInstance, o: { fleet: Fleet; credits: boolean }): Promise<void> {
  app.get("/healthz", async () => ({
    status: "ok",
    /** whether requests are paid in credits on a chain (then `/v1/ledger` says which) */
    credits: o.credits,
    // every replica's nodes (docs/replicas.md)
    nodes: o.fleet.all().length,
    models: [...new Set(o.fleet.all().flatMap((n) => [...n.models.keys()]))].sort(),
  }));
}
