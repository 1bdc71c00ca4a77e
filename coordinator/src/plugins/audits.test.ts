import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import { errorsPlugin } from "../errors.js";
import { auditsPlugin } from "./audits.js";

const limits: number[] = [];
const app = Fastify();
await app.register(errorsPlugin);
await app.register(auditsPlugin, {
  keys: { verify: async () => ({ owner: null }) },
  audits: {
    overview: async ({ limit }: { limit: number }) => {
      limits.push(limit);
      return {};
    },
  },
} as never);
afterAll(() => app.close());

const audits = (limit: string) =>
  app.inject({ url: `/v1/audits?limit=${encodeURIComponent(limit)}`, headers: { authorization: "Bearer sk-operator" } });

describe("GET /v1/audits?limit", () => {
  it("takes the digits of 1 to 500, as documented", async () => {
    for (const limit of ["1", "500", "050"]) expect((await audits(limit)).statusCode, limit).toBe(200);
    expect(limits).toEqual([1, 500, 50]);
  });

  it("refuses anything else, though Number() would read it", async () => {
    for (const limit of ["0", "501", "1e2", "0x10", " 5", "5.0", "+5"]) {
      const res = await audits(limit);
      expect(res.statusCode, limit).toBe(400);
      expect(res.json().error).toMatchObject({ code: "invalid_request", param: "limit" });
    }
  });
});
