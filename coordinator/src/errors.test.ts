import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import { errorsPlugin, routerErrorOptions } from "./errors.js";

const app = Fastify(routerErrorOptions);
await app.register(errorsPlugin);
app.get<{ Params: { id: string } }>("/v1/things/:id", async (req) => ({ id: req.params.id.length }));
afterAll(() => app.close());

describe("what the router refuses", () => {
  it("a path parameter over fastify's default 100 characters reaches its handler", async () => {
    // schemathesis found 414 {"code":"FST_ERR_MAX_PARAM_LENGTH"} for POST /v1/audits/nodes/<long>/clear
    const res = await app.inject(`/v1/things/${"a".repeat(300)}`);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ id: 300 });
  });

  it("answers in the catalog's shape", async () => {
    for (const url of [`/v1/things/${"a".repeat(3000)}`, "/v1/things/%E0%A4%A"]) {
      const res = await app.inject(url);
      expect(res.statusCode, url).toBe(400);
      expect(res.json(), url).toEqual({ error: expect.objectContaining({ code: "invalid_request", type: "invalid_request_error" }) });
    }
  });
});
