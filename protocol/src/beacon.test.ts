import { createHmac } from "node:crypto";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { openBeacon, sealBeacon, signBeacon, siteBeaconKey } from "./beacon.js";
import { NonceCache } from "./siteAuth.js";

const key = siteBeaconKey("join-token-of-site-a");
const account = privateKeyToAccount(generatePrivateKey());
const node = account.address.toLowerCase();

/** A datagram with its JSON rewritten and the site MAC made again, as any site member can. */
function reseal(packet: Buffer, change: (beacon: Record<string, unknown>) => Record<string, unknown>): Buffer {
  const [json, signature] = packet.toString().split("\n") as [string, string];
  const changed = JSON.stringify(change(JSON.parse(json)));
  return Buffer.from(`${changed}\n${signature}\n${createHmac("sha256", key).update(`${changed}\n${signature}`).digest("hex")}`);
}

describe("site beacons", () => {
  it("opens a beacon of this site, signed by the node it names, once", async () => {
    const nonces = new NonceCache();
    const packet = await signBeacon(key, account, { memoryBytes: 8e9, role: "solo" });
    const opened = openBeacon(key, packet, nonces);
    expect(opened).toMatchObject({ ok: true, beacon: { kind: "beacon", node, memoryBytes: 8e9 } });
    // the same datagram again is a replay
    expect(openBeacon(key, packet, nonces)).toEqual({ ok: false, reason: "replayed" });
  });

  it("ignores another site's beacons, forged ones, stale ones and garbage", async () => {
    const nonces = new NonceCache();
    const other = await signBeacon(siteBeaconKey("join-token-of-site-b"), account, {});
    expect(openBeacon(key, other, nonces)).toEqual({ ok: false, reason: "other_site" });
    // claims this site's id, but was sealed without its key
    const genuine = (await signBeacon(key, account, { memoryBytes: 1 })).toString();
    const forged = Buffer.from(genuine.replace('"memoryBytes":1', '"memoryBytes":999999999999'));
    expect(openBeacon(key, forged, nonces)).toEqual({ ok: false, reason: "bad_signature" });
    const stale = await signBeacon(key, account, { ts: Date.now() - 60_000 });
    expect(openBeacon(key, stale, nonces)).toEqual({ ok: false, reason: "expired" });
    expect(openBeacon(key, Buffer.from("hello"), nonces)).toEqual({ ok: false, reason: "malformed" });
    expect(openBeacon(key, Buffer.from('{"kind":"beacon"}\n\nab'), nonces)).toEqual({ ok: false, reason: "malformed" });
  });

  it("drops a site member's beacon that speaks for another node id or inflates a signed claim", async () => {
    const nonces = new NonceCache();
    const member = privateKeyToAccount(generatePrivateKey());
    const own = await signBeacon(key, member, { memoryBytes: 8e9 });
    // the member's own key, another node's id (and its public key: the signature does not match it)
    expect(
      openBeacon(
        key,
        reseal(own, (b) => ({ ...b, node })),
        nonces,
      ),
    ).toEqual({ ok: false, reason: "spoofed" });
    expect(
      openBeacon(
        key,
        reseal(own, (b) => ({ ...b, node, pub: account.publicKey.toLowerCase() })),
        nonces,
      ),
    ).toEqual({
      ok: false,
      reason: "spoofed",
    });
    // its own beacon with a bigger memory claim than it signed
    expect(
      openBeacon(
        key,
        reseal(own, (b) => ({ ...b, memoryBytes: 2 ** 50 })),
        nonces,
      ),
    ).toEqual({ ok: false, reason: "spoofed" });
    // a beacon with no node signature at all
    expect(openBeacon(key, sealBeacon(key, { kind: "beacon", node } as never), nonces)).toEqual({ ok: false, reason: "spoofed" });
    // probes and pongs time round trips and carry no node signature
    expect(openBeacon(key, sealBeacon(key, { kind: "probe", node }), nonces)).toMatchObject({ ok: true });
  });
});
