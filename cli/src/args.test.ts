import { InvalidArgumentError } from "commander";
import { describe, expect, it } from "vitest";
import { proxyAddress } from "./args.js";

describe("--trust-proxy", () => {
  it("takes addresses, CIDR ranges and proxy-addr's names, one more each time", () => {
    let list: string[] = [];
    for (const a of ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "loopback", "uniquelocal"]) list = proxyAddress(a, list);
    expect(list).toEqual(["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "loopback", "uniquelocal"]);
  });

  it("refuses what is not an address: trusting everyone or a host name would let any client name its address", () => {
    for (const a of ["true", "nginx", "10.0.0.0/33", "10.0.0.0/x", "10.0.0.0/8/8", "::/129", "*"])
      expect(() => proxyAddress(a), a).toThrow(InvalidArgumentError);
  });
});
