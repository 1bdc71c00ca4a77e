/**
 * The portal (`web/`'s build) at `/`: hashed assets cached for good, the page itself never, and
 * the portal's own paths answered with its page so a reload or a shared link works. Files are
 * looked up on disk at each request, so a portal rebuilt while the coordinator runs is served
 * as it now is (its new hashed assets included). Every file is served cross-origin isolated
 * (COOP same-origin, COEP require-corp): the Contribute page's engine needs SharedArrayBuffer.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import fastifyStatic from "@fastify/static";
import { ApiError } from "@sharedllm/protocol";
import type { FastifyInstance, FastifyReply } from "fastify";

/** Paths the portal routes in the browser. */
export const PORTAL_PATHS = ["/keys", "/earnings", "/network", "/playground", "/audits", "/federation", "/history", "/contribute"];

export async function webPlugin(app: FastifyInstance, o: { root: string }): Promise<void> {
  await app.register(fastifyStatic, {
    root: o.root,
    wildcard: true,
    cacheControl: false,
    setHeaders(res, path) {
      res.setHeader("cache-control", path.startsWith(join(o.root, "assets")) ? "public, max-age=31536000, immutable" : "no-cache");
      // cross-origin isolation: the Contribute page's engine runs threads on SharedArrayBuffer (docs/browser-node.md)
      res.setHeader("cross-origin-opener-policy", "same-origin");
      res.setHeader("cross-origin-embedder-policy", "require-corp");
    },
  });
  const page = (_req: unknown, reply: FastifyReply) => {
    if (!existsSync(join(o.root, "index.html"))) {
      throw new ApiError("not_found", "the web portal is not built here: run `npm run build` in the repository");
    }
    return reply.sendFile("index.html");
  };
  for (const path of ["/", ...PORTAL_PATHS]) app.get(path, page);
}
