/**
 * Layer placement for a split model (docs/architecture.md, "LAN cluster"): which contiguous
 * layers each cluster member serves. Pure: the model's per-layer sizes, the KV cache each layer
 * needs for the context, and each member's free memory, measured speed and link go in; layer
 * ranges come out, or an error that says how much memory is missing.
 *
 * Layers are shared in proportion to measured speed, capped by memory, so every member takes about
 * as long for its part. Decoding runs the parts one after the other, so a much slower member (or
 * one behind a slow link) would hold every token up: such members are left out as long as the
 * others can hold the model (one weak host must not slow the cluster: llama.cpp issue 10047).
 */
import { sharesByLayers } from "@sharedllm/protocol";
import { SharedLLMError } from "../errors.js";
import type { ModelLayout } from "../models/gguf.js";

export interface MemberInfo {
  id: string;
  freeMemoryBytes: number;
  /** measured decode speed (any common unit: only ratios matter) */
  tokensPerSecond: number;
  /** round trip to the head over the tunnel */
  rttMs: number;
  /** measured link throughput to the head; undefined when not measured */
  throughputMiBps?: number;
}

export interface PlacedMember {
  id: string;
  firstLayer: number;
  layerCount: number;
  /** weights + KV cache of its layers */
  bytes: number;
  /** share of the work, by layers, in basis points (they sum to 10000) */
  shareBps: number;
}

export interface Placement {
  members: PlacedMember[];
  /** members left out, with why */
  excluded: { id: string; reason: string }[];
  /** the cost model's estimate, relative units: sum(layers/speed) + link */
  costMs: number;
}

/** A member further than this round trip is left out of a split when the others can hold the model. */
export const DEFAULT_MAX_RTT_MS = 5;

export interface PlacementOptions {
  /** memory each member keeps free for compute buffers and the OS; default 128 MiB */
  reserveBytes?: number;
  /** a member slower than this fraction of the fastest is left out when possible; default 0.25 */
  minRelativeSpeed?: number;
  /** a member further than this round trip is left out when possible; default DEFAULT_MAX_RTT_MS */
  maxRttMs?: number;
  /** a member whose link carries less than this is left out when possible; default 10 MiB/s */
  minThroughputMiBps?: number;
}

export class PlacementError extends SharedLLMError {
  override name = "PlacementError";
  constructor(
    message: string,
    readonly missingBytes: number,
  ) {
    super("cluster", message);
  }
}

const MiB = 2 ** 20;
const GiB = 2 ** 30;

function fmt(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(1)} GiB` : `${Math.ceil(bytes / MiB)} MiB`;
}

/** Layers per member for one ordered set, or undefined when they cannot hold the model. */
function allocate(model: ModelLayout, members: MemberInfo[], reserve: number): number[] | undefined {
  const n = model.layerBytes.length;
  const room = members.map((m) => m.freeMemoryBytes - reserve);
  if (room.some((r) => r < 0)) return undefined;
  // ideal shares by speed, water-filled under each member's layer capacity
  const avgLayer = model.layerBytes.reduce((a, b) => a + b, 0) / Math.max(1, n) + model.kvBytesPerLayer;
  const cap = room.map((r) => Math.floor(r / avgLayer));
  const target: number[] = members.map(() => 0);
  const speedOf = (i: number) => (members[i] as MemberInfo).tokensPerSecond;
  const at = (xs: number[], i: number) => xs[i] as number;
  let left = n;
  let open = members.map((_, i) => i);
  while (left > 1e-9 && open.length) {
    const speed = open.reduce((s, i) => s + speedOf(i), 0);
    const capped = open.filter((i) => at(target, i) + (left * speedOf(i)) / speed >= at(cap, i));
    if (!capped.length) {
      for (const i of open) target[i] = at(target, i) + (left * speedOf(i)) / speed;
      left = 0;
      break;
    }
    for (const i of capped) {
      left -= at(cap, i) - at(target, i);
      target[i] = at(cap, i);
    }
    open = open.filter((i) => !capped.includes(i));
  }
  if (left > 1e-9) return undefined;
  // whole layers by largest remainder
  const counts = target.map(Math.floor);
  const order = target.map((t, i) => [t - Math.floor(t), i] as const).sort((a, b) => b[0] - a[0]);
  for (let k = 0, missing = n - counts.reduce((a, b) => a + b, 0); missing > 0; k++, missing--) {
    const i = (order[k % order.length] as readonly [number, number])[1];
    counts[i] = (counts[i] as number) + 1;
  }
  // exact check with the real layer sizes; move a layer off a member that overflows
  const fits = (c: number[]) => usage(model, c).every((b, i) => b <= (members[i] as MemberInfo).freeMemoryBytes - reserve);
  for (let guard = 0; !fits(counts); guard++) {
    const bytes = usage(model, counts);
    const over = bytes.findIndex((b, i) => b > (members[i] as MemberInfo).freeMemoryBytes - reserve);
    const to = bytes.findIndex((b, i) => i !== over && b + avgLayer <= (members[i] as MemberInfo).freeMemoryBytes - reserve);
    if (guard >= n * members.length || to < 0 || (counts[over] as number) === 0) return undefined;
    counts[over] = (counts[over] as number) - 1;
    counts[to] = (counts[to] as number) + 1;
  }
  // the capacities above were estimated with the average layer: where a member's real layers left
  // it room, take a layer from a member that is slower for its load, while that shortens the slower
  const load = (i: number, c = at(counts, i)) => c / speedOf(i);
  for (let guard = 0, moved = true; moved && guard < n * members.length; guard++) {
    moved = false;
    for (const j of members.map((_, k) => k).sort((x, y) => load(y) - load(x))) {
      if (at(counts, j) <= 1) continue;
      const i = members.findIndex((_, k) => {
        if (k === j || load(k, at(counts, k) + 1) >= load(j)) return false;
        const trial = [...counts];
        trial[k] = at(trial, k) + 1;
        trial[j] = at(trial, j) - 1;
        return fits(trial);
      });
      if (i < 0) continue;
      counts[i] = at(counts, i) + 1;
      counts[j] = at(counts, j) - 1;
      moved = true;
      break;
    }
  }
  return counts;
}

function usage(model: ModelLayout, counts: number[]): number[] {
  let layer = 0;
  return counts.map((c) => {
    let bytes = 0;
    for (let k = 0; k < c; k++) bytes += (model.layerBytes[layer++] ?? 0) + model.kvBytesPerLayer;
    return bytes;
  });
}

function cost(members: MemberInfo[], counts: number[]): number {
  const n = counts.reduce((a, b) => a + b, 0);
  return members.reduce(
    (sum, m, i) => ((counts[i] as number) > 0 ? sum + ((counts[i] as number) / n) * (1000 / m.tokensPerSecond) + m.rttMs : sum),
    0,
  );
}

export function planPlacement(model: ModelLayout, members: MemberInfo[], opts: PlacementOptions = {}): Placement {
  const reserve = opts.reserveBytes ?? 128 * MiB;
  const minRelative = opts.minRelativeSpeed ?? 0.25;
  const maxRtt = opts.maxRttMs ?? DEFAULT_MAX_RTT_MS;
  const minThroughput = opts.minThroughputMiBps ?? 10;
  const nearEnough = (m: MemberInfo) => m.rttMs <= maxRtt && (m.throughputMiBps === undefined || m.throughputMiBps >= minThroughput);
  if (!model.layerBytes.length) throw new PlacementError("the model has no layers to place", 0);
  const usable = members.filter((m) => m.tokensPerSecond > 0 && m.freeMemoryBytes > 0);
  const excluded = members.filter((m) => !usable.includes(m)).map((m) => ({ id: m.id, reason: "no measured speed or no free memory" }));
  // fastest first: the order of the layer ranges
  const ranked = [...usable].sort((a, b) => b.tokensPerSecond - a.tokensPerSecond || a.id.localeCompare(b.id));
  const fastest = ranked[0]?.tokensPerSecond ?? 0;
  // a plan gives every member at least one layer: a member without layers has no part in the split
  const tryPlan = (members: MemberInfo[]): { set: MemberInfo[]; counts: number[] } | undefined => {
    let current = members;
    for (;;) {
      const c = allocate(model, current, reserve);
      if (!c) return undefined;
      const kept = current.filter((_, i) => (c[i] as number) > 0);
      if (kept.length === current.length) return { set: current, counts: c };
      current = kept;
    }
  };
  // start with the members fast and near enough to matter; add the others only while memory requires them
  let set = ranked.filter((m) => m.tokensPerSecond >= fastest * minRelative && nearEnough(m));
  let plan = set.length ? tryPlan(set) : undefined;
  for (const m of ranked) {
    if (plan) break;
    if (set.includes(m)) continue;
    set = [...set, m];
    plan = tryPlan(set);
  }
  if (!plan) {
    const total = model.layerBytes.reduce((a, b) => a + b, 0) + model.kvBytesPerLayer * model.layerBytes.length;
    const free = ranked.reduce((s, m) => s + Math.max(0, m.freeMemoryBytes - reserve), 0);
    const missing = Math.max(1, total - free);
    throw new PlacementError(
      `the model needs ${fmt(total)} across the cluster and its ${ranked.length} usable member(s) have ${fmt(free)} free: it needs ${fmt(missing)} more (add a member or free memory)`,
      missing,
    );
  }
  set = plan.set;
  const counts = plan.counts;
  for (const m of ranked) {
    if (set.includes(m)) continue;
    const reason =
      m.rttMs > maxRtt
        ? `link too slow (${m.rttMs} ms round trip)`
        : !nearEnough(m)
          ? `link too narrow (${m.throughputMiBps?.toFixed(1)} MiB/s)`
          : "too slow to help";
    excluded.push({ id: m.id, reason });
  }
  const placed: PlacedMember[] = [];
  const bytes = usage(model, counts);
  let first = 0;
  set.forEach((m, i) => {
    const c = counts[i] as number;
    if (c > 0) placed.push({ id: m.id, firstLayer: first, layerCount: c, bytes: bytes[i] as number, shareBps: 0 });
    first += c;
  });
  const shares = sharesByLayers(placed.map((p) => p.layerCount));
  placed.forEach((p, i) => {
    p.shareBps = shares[i] as number;
  });
  return { members: placed, excluded, costMs: cost(set, counts) };
}

/** The output's weights (and a tied output's copy of the token embeddings), kept on the head. */
const OUTPUT_ON_HEAD = "^(output|token_embd)=CPU";

/**
 * llama-server's arguments that place a placement's layers exactly where it says, members in
 * device order: each member's own report of what was placed on it must match to the layer.
 * llama.cpp (llama-model.cpp, load_tensors) offloads layers from `n_layer + 1 - n_gpu_layers` on,
 * the output counting as layer `n_layer`, and gives each layer `il` the device whose running share
 * of `--tensor-split` first exceeds `float(il - first offloaded) / offloaded`. So:
 * `--n-gpu-layers n_layer + 1` (with `n_layer`, layer 0 would stay on the head and every member's
 * range would move up by one), and the layer counts as the split, the last member's plus one for
 * the output's slot. The output's weights stay on the head all the same (`--override-tensor`):
 * neither the plan nor the last member's memory counts them, and a token's trip back is then its
 * hidden state, not the logits over the whole vocabulary (2.3 KB instead of 196 KB for the default
 * model).
 */
export function splitArgs(p: Placement): string[] {
  const layers = p.members.reduce((s, m) => s + m.layerCount, 0);
  const weights = p.members.map((m, i) => m.layerCount + (i === p.members.length - 1 ? 1 : 0));
  return ["--tensor-split", weights.join(","), "--n-gpu-layers", String(layers + 1), "--override-tensor", OUTPUT_ON_HEAD];
}
