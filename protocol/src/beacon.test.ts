import { describe, expect, it } from "vitest";
import { openBeacon, sealBeacon, siteBeaconKey } from "./beacon.js";
import { NonceCache } from "./siteAuth.js";

const key = siteBeaconKey("join-token-of-site-a");
const node = "0x00000000000000000000000000000000000000aa";

describe("site beacons", () => {
  it("opens a beacon of this site once", () => {
    const nonces = new NonceCache();
    const packet = sealBeacon(key, { kind: "beacon", node, memoryBytes: 8e9, role: "solo" });
    const opened = openBeacon(key, packet, nonces);
    expect(opened).toMatchObject({ ok: true, beacon: { kind: "beacon", node, memoryBytes: 8e9 } });
    // the same datagram again is a replay
    expect(openBeacon(key, packet, nonces)).toEqual({ ok: false, reason: "replayed" });
  });

  it("ignores another site's beacons, forged ones, stale ones and garbage", () => {
    const nonces = new NonceCache();
    const other = sealBeacon(siteBeaconKey("join-token-of-site-b"), { kind: "beacon", node });
    expect(openBeacon(key, other, nonces)).toEqual({ ok: false, reason: "other_site" });
    // claims this site's id, but was signed without its key
    const genuine = sealBeacon(key, { kind: "beacon", node, memoryBytes: 1 }).toString();
    const forged = Buffer.from(genuine.replace('"memoryBytes":1', '"memoryBytes":999999999999'));
    expect(openBeacon(key, forged, nonces)).toEqual({ ok: false, reason: "bad_signature" });
    const stale = sealBeacon(key, { kind: "beacon", node, ts: Date.now() - 60_000 });
    expect(openBeacon(key, stale, nonces)).toEqual({ ok: false, reason: "expired" });
    expect(openBeacon(key, Buffer.from("hello"), nonces)).toEqual({ ok: false, reason: "malformed" });
    expect(openBeacon(key, Buffer.from('{"kind":"beacon"}\nab'), nonces)).toEqual({ ok: false, reason: "malformed" });
  });
});
