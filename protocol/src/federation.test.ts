import { describe, expect, it } from "vitest";
import { isLoopbackHost, peerUrlProblem } from "./federation.js";

describe("peer URLs", () => {
  it("allow https anywhere, plain http only to loopback", () => {
    for (const ok of [
      "https://a.example",
      "https://10.0.0.1:8443/x",
      "http://127.0.0.1:3000",
      "http://127.8.9.10",
      "http://localhost:1",
      "http://[::1]:80",
    ]) {
      expect(peerUrlProblem(ok), ok).toBeUndefined();
    }
    expect(peerUrlProblem("http://a.example")).toMatch(/use https/);
    expect(peerUrlProblem("http://10.0.0.1:3000")).toMatch(/use https/);
    expect(peerUrlProblem("http://127.0.0.1.evil.example")).toMatch(/use https/);
    expect(peerUrlProblem("http://localhost.evil.example")).toMatch(/use https/);
    expect(peerUrlProblem("ftp://a.example")).toMatch(/not an http/);
    expect(peerUrlProblem("nope")).toMatch(/not a URL/);
    expect(isLoopbackHost("[::1]")).toBe(true);
    expect(isLoopbackHost("::ffff:7f00:1")).toBe(false);
  });
});
