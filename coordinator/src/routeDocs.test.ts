import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ROUTE_DOCS } from "./routeDocs.js";

describe("the documented request schemas", () => {
  it("GET /v1/audits: limit is documented as the handler takes it, 1 to 500", () => {
    const query = ROUTE_DOCS["GET /v1/audits"]?.querystring;
    const ok = (limit: string) => query?.safeParse({ limit }).success;
    for (const limit of ["1", "9", "10", "99", "100", "499", "500", "050"]) expect(ok(limit), limit).toBe(true);
    // schemathesis found "0" in the spec and a 400 from the handler
    for (const limit of ["0", "00", "501", "999", "1000", "", "-1", "1.5"]) expect(ok(limit), limit).toBe(false);
  });

  it("addresses say that mixed case must be a valid EIP-55 checksum, which their pattern cannot check", () => {
    // schemathesis: GET /v1/earnings/0xBEA7bB01dc00BAca71a520a356b1EB4D63da50b0 matches the pattern, and is 400 "not an address"
    for (const route of ["GET /v1/earnings/:address", "POST /v1/audits/nodes/:node/clear"]) {
      const params = ROUTE_DOCS[route]?.params as z.ZodType;
      expect(JSON.stringify(z.toJSONSchema(params)), route).toContain("EIP-55 checksum");
    }
  });
});
