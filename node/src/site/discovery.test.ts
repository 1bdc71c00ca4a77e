/**
 * Discovery over real UDP sockets on loopback (unicast targets, as with `--scan`): two daemons
 * of one site find each other and measure round trips; a daemon of another site, forged and
 * replayed datagrams are ignored.
 */
import dgram from "node:dgram";
import { sealBeacon, siteBeaconKey } from "@sharedllm/protocol";
import { afterEach, describe, expect, it } from "vitest";
import { quietLogger, waitFor } from "../../../test/helpers.ts";
import { freePort } from "../engine/freePort.js";
import { Discovery, expandCidr } from "./discovery.js";

const siteA = siteBeaconKey("site-a-token");
const siteB = siteBeaconKey("site-b-token");
const id = (n: number) => `0x${n.toString(16).padStart(40, "0")}`;
const running: Discovery[] = [];
afterEach(() => {
  for (const d of running.splice(0)) d.stop();
});

async function daemon(key: Buffer, node: string, port: number, targets: string[]) {
  const d = new Discovery({
    key,
    nodeId: node,
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
    const a = await daemon(siteA, id(1), pa, all);
    const b = await daemon(siteA, id(2), pb, all);
    await daemon(siteB, id(3), pc, all);
    await waitFor(
      "a and b to measure each other",
      () => a.view().find((p) => p.nodeId === id(2))?.rttMs !== undefined && b.view().some((p) => p.nodeId === id(1)),
    );
    expect(a.view().map((p) => p.nodeId)).toEqual([id(2)]);
    expect(a.view()[0]?.rttMs).toBeLessThan(50);
    await waitFor("site B's beacons to be ignored", () => a.ignored.other_site > 0);

    // a forged beacon (site A's id, no key) and a replayed genuine one
    const sock = dgram.createSocket("udp4");
    const genuine = sealBeacon(siteA, { kind: "beacon", node: id(9), memoryBytes: 1 });
    const forged = Buffer.from(genuine.toString().replace(id(9), id(8)));
    const send = (buf: Buffer) => new Promise((r) => sock.send(buf, pa, "127.0.0.1", r));
    await send(forged);
    await send(genuine);
    await send(genuine);
    await waitFor("the forged and replayed datagrams to be ignored", () => a.ignored.bad_signature >= 1 && a.ignored.replayed >= 1);
    sock.close();
    expect(a.view().some((p) => p.nodeId === id(8))).toBe(false);
    expect(a.view().some((p) => p.nodeId === id(3))).toBe(false);
  });

  it("expands scan ranges", () => {
    expect(expandCidr("10.1.2.0/30")).toEqual(["10.1.2.1", "10.1.2.2"]);
    expect(expandCidr("192.168.1.77/24")).toHaveLength(254);
    expect(() => expandCidr("10.0.0.0/8")).toThrow(/too large/);
    expect(() => expandCidr("nonsense")).toThrow(/IPv4 range/);
  });
});
