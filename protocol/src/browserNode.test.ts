import { createHash } from "node:crypto";
import { verifyTypedData } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { delegationTypedData, sha256Hex, signSiteRequestWeb } from "./browserNode.js";
import { NonceCache, verifySiteRequest } from "./siteAuth.js";

describe("a tab's site request signature (WebCrypto)", () => {
  it("is the one the coordinator checks with node:crypto; without a join token it carries no signature", async () => {
    const body = JSON.stringify({ hello: "world" });
    const headers = await signSiteRequestWeb("the-join-token", "POST", "/v1/nodes/register-browser", body);
    const req = { method: "POST", path: "/v1/nodes/register-browser", headers, body };
    expect(verifySiteRequest("the-join-token", req, new NonceCache()).ok).toBe(true);
    expect(verifySiteRequest("another-token", req, new NonceCache())).toEqual({ ok: false, reason: "bad_signature" });
    const open = await signSiteRequestWeb(undefined, "POST", "/x", body);
    expect(Object.keys(open).sort()).toEqual(["x-sharedllm-nonce", "x-sharedllm-timestamp"]);
  });
});

describe("the wallet's delegation", () => {
  it("verifies for the wallet that signed it and no other", async () => {
    const wallet = privateKeyToAccount(generatePrivateKey());
    const d = {
      sessionKey: privateKeyToAccount(generatePrivateKey()).address,
      coordinator: "http://127.0.0.1:8787",
      chainId: 31337,
      expiresAt: 2_000_000_000,
    };
    const signature = await wallet.signTypedData(delegationTypedData(d));
    expect(await verifyTypedData({ address: wallet.address, ...delegationTypedData(d), signature })).toBe(true);
    expect(await verifyTypedData({ address: wallet.address, ...delegationTypedData({ ...d, chainId: 1 }), signature })).toBe(false);
    expect(
      await verifyTypedData({ address: wallet.address, ...delegationTypedData({ ...d, coordinator: "https://other.example" }), signature }),
    ).toBe(false);
  });
});

it("sha256Hex is the file's sha256", async () => {
  const data = new TextEncoder().encode("model bytes");
  expect(await sha256Hex(data)).toBe(`0x${createHash("sha256").update(data).digest("hex")}`);
});
