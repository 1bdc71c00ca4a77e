import { InvalidArgumentError } from "commander";
import { describe, expect, it } from "vitest";
import { proxyAddress, slotCount } from "./args.js";

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

describe("--slots", () => {
  it("takes 1 to MAX_SLOTS, the most a coordinator accepts from a node", () => {
    expect([slotCount("1"), slotCount("64")]).toEqual([1, 64]);
    for (const v of ["0", "65", "2.5", "two"]) expect(() => slotCount(v), v).toThrow(/from 1 to 64/);
  });
});
