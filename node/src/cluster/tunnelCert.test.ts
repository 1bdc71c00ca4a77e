import { X509Certificate } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ephemeralCert } from "./tunnelCert.js";

describe("ephemeralCert", () => {
  it("makes certificates OpenSSL loads, every time (a serial with DER padding failed about one in 256)", () => {
    for (let i = 0; i < 1000; i++) {
      const c = ephemeralCert();
      const x = new X509Certificate(c.cert);
      expect(x.serialNumber).toMatch(/^[0-7][0-9A-F]{31}$/);
    }
  });
});
