import { describe, expect, it } from "vitest";
import type { ModelLayout } from "../models/gguf.js";
import { type MemberInfo, type Placement, PlacementError, planPlacement, splitArgs } from "./placement.js";

const MiB = 2 ** 20;
const model = (layers: number, layerMiB = 10, kvMiB = 1): ModelLayout => ({
  layerBytes: Array.from({ length: layers }, () => layerMiB * MiB),
  kvBytesPerLayer: kvMiB * MiB,
});
const member = (id: string, freeMiB: number, tps = 10, rttMs = 0.3): MemberInfo => ({
  id,
  freeMemoryBytes: freeMiB * MiB,
  tokensPerSecond: tps,
  rttMs,
});

/** A small deterministic PRNG for the property checks. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe("planPlacement", () => {
  it("splits equal members evenly into contiguous ranges; the output head is not theirs", () => {
    const p = planPlacement(model(30), [member("a", 4096), member("b", 4096)]);
    expect(p.members.map((m) => [m.id, m.firstLayer, m.layerCount])).toEqual([
      ["a", 0, 15],
      ["b", 15, 15],
    ]);
    expect(p.members[1]?.bytes).toBe(15 * 11 * MiB);
    expect(p.members.reduce((s, m) => s + m.shareBps, 0)).toBe(10_000);
    expect(splitArgs(p)).toEqual(["--tensor-split", "15,16", "--n-gpu-layers", "31", "--override-tensor", "^(output|token_embd)=CPU"]);
  });

  it("gives faster members proportionally more", () => {
    const p = planPlacement(model(30), [member("slow", 4096, 10), member("fast", 4096, 20)]);
    expect(p.members.map((m) => [m.id, m.layerCount])).toEqual([
      ["fast", 20],
      ["slow", 10],
    ]);
    expect(p.members.map((m) => m.shareBps)).toEqual([6667, 3333]);
  });

  it("leaves out a member too slow or too far to help, unless memory needs it", () => {
    const roomy = planPlacement(model(30), [
      member("a", 4096, 20),
      member("b", 4096, 20),
      member("weak", 4096, 2),
      member("far", 4096, 20, 40),
    ]);
    expect(roomy.members.map((m) => m.id)).toEqual(["a", "b"]);
    expect(roomy.excluded).toEqual(
      expect.arrayContaining([
        { id: "weak", reason: "too slow to help" },
        { id: "far", reason: "link too slow (40 ms round trip)" },
      ]),
    );
    expect(roomy.excluded).toHaveLength(2);
    const narrow = planPlacement(model(30), [member("a", 4096), { ...member("thin", 4096), throughputMiBps: 2 }]);
    expect(narrow.excluded).toEqual([{ id: "thin", reason: "link too narrow (2.0 MiB/s)" }]);
    // a and b alone cannot hold it: the weak member is needed after all
    const tight = planPlacement(model(30), [member("a", 128 + 150, 20), member("b", 128 + 150, 20), member("weak", 4096, 2)]);
    expect(tight.members.map((m) => m.id).sort()).toEqual(["a", "b", "weak"]);
  });

  it("says how much memory is missing when the model does not fit", () => {
    expect(() => planPlacement(model(30), [member("a", 200), member("b", 200)])).toThrow(PlacementError);
    try {
      planPlacement(model(30), [member("a", 200), member("b", 200)]);
    } catch (err) {
      // 30 * 11 = 330 MiB needed, 2 * (200 - 128) = 144 free
      expect((err as PlacementError).missingBytes).toBe(186 * MiB);
      expect((err as Error).message).toContain("needs 186 MiB more");
    }
  });

  it("never exceeds a member's memory, places every layer once, and favours speed (random clusters)", () => {
    const rand = rng(42);
    let planned = 0;
    for (let trial = 0; trial < 500; trial++) {
      const layers = 4 + Math.floor(rand() * 60);
      const layout: ModelLayout = {
        layerBytes: Array.from({ length: layers }, () => Math.floor((5 + rand() * 20) * MiB)),
        kvBytesPerLayer: Math.floor(rand() * 2 * MiB),
      };
      const members = Array.from({ length: 1 + Math.floor(rand() * 5) }, (_, i) =>
        member(`m${i}`, 128 + Math.floor(rand() * 1200), 1 + Math.floor(rand() * 40), rand() * 3),
      );
      let p: ReturnType<typeof planPlacement>;
      try {
        p = planPlacement(layout, members);
      } catch (err) {
        expect(err).toBeInstanceOf(PlacementError);
        continue;
      }
      planned++;
      let next = 0;
      for (const m of p.members) {
        expect(m.firstLayer).toBe(next);
        expect(m.layerCount).toBeGreaterThan(0);
        next += m.layerCount;
        const info = members.find((x) => x.id === m.id) as MemberInfo;
        expect(m.bytes).toBeLessThanOrEqual(info.freeMemoryBytes - 128 * MiB);
      }
      expect(next).toBe(layers);
      expect(p.members.reduce((s, m) => s + m.shareBps, 0)).toBe(10_000);
      // where memory did not bind, a faster member never holds fewer layers than a slower one (beyond rounding)
      for (const a of p.members) {
        for (const b of p.members) {
          const sa = (members.find((x) => x.id === a.id) as MemberInfo).tokensPerSecond;
          const sb = (members.find((x) => x.id === b.id) as MemberInfo).tokensPerSecond;
          const roomA = (members.find((x) => x.id === a.id) as MemberInfo).freeMemoryBytes - 128 * MiB - a.bytes;
          if (sa > sb && roomA > 40 * MiB) expect(a.layerCount).toBeGreaterThanOrEqual(b.layerCount - 1);
        }
      }
    }
    expect(planned).toBeGreaterThan(100);
  });
});

/**
 * llama.cpp's layer assignment (llama-model.cpp, load_tensors), in float32 as there: the device of
 * each layer and of the output (index n_layer), -1 for the CPU.
 */
function llamaDevices(nLayer: number, args: string[]): number[] {
  const split = (args[args.indexOf("--tensor-split") + 1] as string).split(",").map(Number);
  const ngl = Number(args[args.indexOf("--n-gpu-layers") + 1]);
  const f = Math.fround;
  let sum = f(0);
  const splits = split.map((x) => (sum = f(sum + f(x))));
  const points = splits.map((x) => f(x / sum));
  const start = Math.max(nLayer + 1 - ngl, 0);
  const offloaded = Math.min(ngl, nLayer + 1);
  return Array.from({ length: nLayer + 1 }, (_, il) => {
    if (il < start || il - start >= offloaded) return -1;
    const x = f(f(il - start) / offloaded);
    const i = points.findIndex((p) => p > x);
    return i < 0 ? points.length : i;
  });
}

describe("splitArgs", () => {
  it("makes llama.cpp place exactly the planned layers on each member (the output's slot on the last, its weights overridden)", () => {
    const placement = (counts: number[]): Placement => {
      let first = 0;
      const members = counts.map((layerCount, i) => {
        const m = { id: `m${i}`, firstLayer: first, layerCount, bytes: 0, shareBps: 0 };
        first += layerCount;
        return m;
      });
      return { members, excluded: [], costMs: 0 };
    };
    const cases: number[][] = [[30], [20, 10], [15, 15], [1, 29], [29, 1], [10, 10, 10], [7, 13, 5, 5], [1, 1, 1], [40, 41, 47]];
    for (let a = 1; a < 80; a += 3) for (let b = 1; b < 80; b += 7) cases.push([a, b], [b, a, 3]);
    for (const counts of cases) {
      const p = placement(counts);
      const n = counts.reduce((s, c) => s + c, 0);
      const devices = llamaDevices(n, splitArgs(p));
      const expected = p.members.flatMap((m, i) => Array.from({ length: m.layerCount }, () => i));
      expect(devices, counts.join(",")).toEqual([...expected, counts.length - 1]);
    }
  });

  it("(with n_layer offloaded, as before, layer 0 stayed on the head and the members' ranges moved up)", () => {
    expect(llamaDevices(30, ["--tensor-split", "20,10", "--n-gpu-layers", "30"]).slice(0, 22)).toEqual([
      -1,
      ...Array.from({ length: 20 }, () => 0),
      1,
    ]);
  });
});
