import { tempPaths } from "@sharedllm/testkit";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Engine } from "../engine/build.js";
import { capabilities, detectHardware, type Hardware } from "./capabilities.js";

let tmp: Awaited<ReturnType<typeof tempPaths>>;
beforeEach(async () => {
  tmp = await tempPaths("caps-");
});
afterEach(() => tmp.cleanup());

const engine = { tag: "v1", variant: "cpu" } as Engine;
const hardware: Hardware = { cpuModel: "Test CPU", cores: 2, memoryBytes: 8e9, gpu: null, vramBytes: 0 };

describe("capabilities", () => {
  it("measures the speed once, reuses it, and measures again when hardware, engine, model or threads change", async () => {
    let measured = 0;
    const measure = async () => {
      measured++;
      return 100 + measured;
    };
    const base = { home: tmp.home, cache: tmp.home, engine, model: { sha256: "a".repeat(64), measure }, threads: 2, hardware };
    const first = await capabilities(base);
    expect(first).toMatchObject({ cpuModel: "Test CPU", cores: 2, threads: 2, gpu: null, engineVariant: "cpu", tokensPerSecond: 101 });
    expect(first.freeDiskBytes).toBeGreaterThan(0);
    expect((await capabilities(base)).tokensPerSecond).toBe(101);
    expect(measured).toBe(1);
    expect((await capabilities({ ...base, threads: 1 })).tokensPerSecond).toBe(102);
    expect((await capabilities({ ...base, threads: 1, engine: { ...engine, tag: "v2" } })).tokensPerSecond).toBe(103);
    expect(
      (await capabilities({ ...base, threads: 1, engine: { ...engine, tag: "v2" }, hardware: { ...hardware, memoryBytes: 16e9 } }))
        .tokensPerSecond,
    ).toBe(104);
    expect(measured).toBe(4);
  });

  it("reports a speed of 0, measuring nothing, for a node that serves no model (a cluster worker)", async () => {
    const caps = await capabilities({ home: tmp.home, cache: tmp.home, engine, threads: 2, hardware });
    expect(caps).toMatchObject({ cpuModel: "Test CPU", threads: 2, engineVariant: "cpu", tokensPerSecond: 0 });
    expect(caps.freeDiskBytes).toBeGreaterThan(0);
  });

  it("detects this machine's CPU and memory, and a GPU only where node-llama-cpp finds one", async () => {
    const hw = await detectHardware(pino({ level: "silent" }));
    expect(hw.cores).toBeGreaterThan(0);
    expect(hw.memoryBytes).toBeGreaterThan(0);
    if (hw.gpu === null) expect(hw.vramBytes).toBe(0);
    else expect(hw.vramBytes).toBeGreaterThan(0);
  });
});
