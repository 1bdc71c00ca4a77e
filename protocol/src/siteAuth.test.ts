import { describe, expect, it } from "vitest";
import { NonceCache, SITE_AUTH_WINDOW_MS, signSiteRequest, verifySiteRequest } from "./siteAuth.js";

const key = "site-key";
const req = (headers: Record<string, string>, over: Partial<{ method: string; path: string; body: string }> = {}) => ({
  method: "POST",
  path: "/v1/nodes/register",
  body: '{"a":1}',
  headers,
  ...over,
});

describe("site request signatures", () => {
  it("verify once, within the window, for exactly the signed method, path and body", () => {
    const now = 1_000_000;
    const headers = signSiteRequest(key, "POST", "/v1/nodes/register", '{"a":1}', now);
    expect(verifySiteRequest(key, req(headers), new NonceCache(), now + 1_000).ok).toBe(true);
    const fresh = () => new NonceCache();
    expect(verifySiteRequest("other-key", req(headers), fresh(), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(verifySiteRequest(key, req(headers, { body: '{"a":2}' }), fresh(), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(verifySiteRequest(key, req(headers, { path: "/v1/other" }), fresh(), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(verifySiteRequest(key, req(headers, { method: "PUT" }), fresh(), now)).toEqual({ ok: false, reason: "bad_signature" });
    expect(verifySiteRequest(key, req(headers), fresh(), now + SITE_AUTH_WINDOW_MS + 1)).toEqual({ ok: false, reason: "expired" });
    expect(verifySiteRequest(key, req({}), fresh(), now)).toEqual({ ok: false, reason: "missing" });
  });

  it("refuses a replay, and only remembers nonces of requests that verified", () => {
    const now = 5_000_000;
    const nonces = new NonceCache();
    const headers = signSiteRequest(key, "POST", "/v1/nodes/register", '{"a":1}', now);
    expect(verifySiteRequest("wrong", req(headers), nonces, now).ok).toBe(false);
    expect(verifySiteRequest(key, req(headers), nonces, now).ok).toBe(true);
    expect(verifySiteRequest(key, req(headers), nonces, now + 10)).toEqual({ ok: false, reason: "replayed" });
  });

  it("forgets nonces once their requests could no longer be fresh", () => {
    const cache = new NonceCache();
    expect(cache.add("n", 100, 0)).toBe(true);
    expect(cache.add("n", 100, 50)).toBe(false);
    expect(cache.add("n", 300, 101)).toBe(true);
  });
});
