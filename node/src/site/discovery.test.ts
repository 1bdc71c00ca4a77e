/**
 * Discovery over real UDP sockets on loopback (unicast targets, as with `--scan`): two daemons
 * of one site find each other and measure round trips; a daemon of another site, forged,
 * spoofed (another node's id) and replayed datagrams are ignored.
 */
import { createHmac, randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { sealBeacon, signBeacon, siteBeaconKey } from "@sharedllm/protocol/node";
import { quietLogger, waitFor } from "@sharedllm/testkit";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../engine/freePort.js";
import { Discovery, expandCidr } from "./discovery.js";

const siteA = siteBeaconKey("site-a-token");
const siteB = siteBeaconKey("site-b-token");
const keys = Array.from({ length: 10 }, () => privateKeyToAccount(generatePrivateKey()));
const id = (n: number) => (keys[n] as PrivateKeyAccount).address.toLowerCase();
const running: Discovery[] = [];
afterEach(() => {
  for (const d of running.splice(0)) d.stop();
});

async function daemon(key: Buffer, n: number, port: number, targets: string[]) {
  const d = new Discovery({
    key,
    signer: keys[n] as PrivateKeyAccount,
    info: () => ({ memoryBytes: 8 * 2 ** 30, role: "solo" }),
    port,
    group: null,
    targets,
    intervalMs: 100,
    bindAddress: "127.0.0.1",
    logger: quietLogger(),
  });
  await d.start();
  running.push(d);
  return d;
}

describe("LAN discovery", () => {
  it("finds the site's peers with round trips, and ignores another site, forged and replayed beacons", async () => {
    const [pa, pb, pc] = [await freePort(), await freePort(), await freePort()];
    const all = [pa, pb, pc].map((p) => `127.0.0.1:${p}`);
    const a = await daemon(siteA, 1, pa, all);
    const b = await daemon(siteA, 2, pb, all);
    await daemon(siteB, 3, pc, all);
    await waitFor(
      "a and b to measure each other",
      () => a.view().find((p) => p.nodeId === id(2))?.rttMs !== undefined && b.view().some((p) => p.nodeId === id(1)),
    );
    expect(a.view().map((p) => p.nodeId)).toEqual([id(2)]);
    expect(a.view()[0]?.rttMs).toBeLessThan(50);
    await waitFor("site B's beacons to be ignored", () => a.ignored.other_site > 0);

    // a forged beacon (site A's id, no key), a replayed genuine one, and a site member's beacons
    // speaking for another node id: unsigned, and signed with its own key but naming b
    const sock = dgram.createSocket("udp4");
    const genuine = await signBeacon(siteA, keys[9] as PrivateKeyAccount, { memoryBytes: 1 });
    const forged = Buffer.from(genuine.toString().replace(id(9), id(8)));
    const unsigned = sealBeacon(siteA, { kind: "beacon", node: id(7), memoryBytes: 2 ** 50 } as never);
    const own = (await signBeacon(siteA, keys[6] as PrivateKeyAccount, { memoryBytes: 2 ** 50 })).toString();
    const json = JSON.parse(own.split("\n")[0] as string);
    const asB = JSON.stringify({ ...json, node: id(2) });
    const sig = own.split("\n")[1] as string;
    const spoofed = Buffer.from(`${asB}\n${sig}\n${createHmac("sha256", siteA).update(`${asB}\n${sig}`).digest("hex")}`);
    const send = (buf: Buffer) => new Promise((r) => sock.send(buf, pa, "127.0.0.1", r));
    const memoryOfB = a.view().find((p) => p.nodeId === id(2))?.memoryBytes;
    for (const d of [forged, genuine, genuine, unsigned, spoofed]) await send(d);
    await waitFor(
      "the forged, replayed and spoofed datagrams to be ignored",
      () => a.ignored.bad_signature >= 1 && a.ignored.replayed >= 1 && a.ignored.spoofed >= 2,
    );
    sock.close();
    for (const n of [8, 7, 3]) expect(a.view().some((p) => p.nodeId === id(n))).toBe(false);
    expect(a.view().find((p) => p.nodeId === id(2))?.memoryBytes).toBe(memoryOfB);
  });

  it("keeps finding its peers through a flood of garbage, oversized, other sites' and forged datagrams", async () => {
    const [pa, pb] = [await freePort(), await freePort()];
    const all = [pa, pb].map((p) => `127.0.0.1:${p}`);
    const a = await daemon(siteA, 1, pa, all);
    await daemon(siteA, 2, pb, all);
    await waitFor("a to find b", () => a.view().some((p) => p.nodeId === id(2)));
    const sock = dgram.createSocket("udp4");
    const genuine = (await signBeacon(siteA, keys[9] as PrivateKeyAccount, { memoryBytes: 1 })).toString();
    const otherSite = await signBeacon(siteB, keys[8] as PrivateKeyAccount, { memoryBytes: 1 });
    const kinds = [
      () => randomBytes(1 + Math.floor(Math.random() * 1_500)),
      // larger than any beacon, up to what a UDP datagram carries
      () => Buffer.alloc(60_000, 0x7b),
      () => Buffer.from(`${"[".repeat(1_000)}${"]".repeat(1_000)}\nx\ny`),
      () => otherSite,
      // site A's id with a MAC made without its key
      () => Buffer.from(`${genuine.slice(0, genuine.lastIndexOf("\n"))}\n${randomBytes(32).toString("hex")}`),
    ];
    const heap = process.memoryUsage().heapUsed;
    const ignored = () => Object.values(a.ignored).reduce((n, c) => n + c, 0);
    const started = performance.now();
    // in bursts the socket's receive buffer holds (datagrams beyond it are dropped by the kernel, unread)
    const COUNT = 2_000;
    for (let sent = 0; sent < COUNT; ) {
      for (let k = 0; k < 10; k++, sent++) sock.send((kinds[sent % kinds.length] as () => Buffer)(), pa, "127.0.0.1");
      const expected = sent;
      await waitFor("the burst to be read and ignored", () => ignored() >= expected, 2_000, 1);
    }
    const perDatagramMs = (performance.now() - started) / COUNT;
    console.log(`beacon flood: ${COUNT} hostile datagrams read and ignored at ${(perDatagramMs * 1000).toFixed(0)} µs each`);
    sock.close();
    const seen = a.view().find((p) => p.nodeId === id(2))?.lastSeen ?? 0;
    await waitFor("b to be heard again after the flood", () => (a.view().find((p) => p.nodeId === id(2))?.lastSeen ?? 0) > seen, 5_000);
    expect(a.view().map((p) => p.nodeId)).toEqual([id(2)]);
    expect(a.ignored.malformed).toBeGreaterThan(0);
    expect(a.ignored.other_site).toBeGreaterThan(0);
    expect(a.ignored.bad_signature).toBeGreaterThan(0);
    expect((process.memoryUsage().heapUsed - heap) / 2 ** 20).toBeLessThan(32);
    // sent, read, checked and ignored, with the test's own waits: far below a millisecond each
    expect(perDatagramMs).toBeLessThan(2);
  });

  it("expands scan ranges", () => {
    expect(expandCidr("10.1.2.0/30")).toEqual(["10.1.2.1", "10.1.2.2"]);
    expect(expandCidr("192.168.1.77/24")).toHaveLength(254);
    expect(() => expandCidr("10.0.0.0/8")).toThrow(/too large/);
    expect(() => expandCidr("nonsense")).toThrow(/IPv4 range/);
  });
});
