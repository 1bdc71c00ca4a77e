/** What owner-first reads from Linux: the node's own CPU time from /proc (for real), and the power supply (fake /sys files). */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "@sharedllm/testkit";
import { afterEach, describe, expect, it } from "vitest";
import { onBattery, readCpuSample } from "./ownerSignals.js";

const SPIN = "for (;;) {}";

/** utime + stime of one process, clock ticks */
const ticks = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return Number(f[11]) + Number(f[12]);
};

describe.skipIf(process.platform !== "linux")("readCpuSample", () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) process.kill(-(c.pid as number), "SIGKILL");
  });

  it("counts a busy descendant of the root as its own, and a busy process outside its tree as others'", async () => {
    // the root (a stand-in for the daemon) spawns a busy child; the stranger spins beside it, not under it
    const root = spawn(
      process.execPath,
      [
        "-e",
        `const c = require("node:child_process").spawn(process.execPath, ["-e", ${JSON.stringify(SPIN)}]); console.log(c.pid); setInterval(() => {}, 1e9);`,
      ],
      { detached: true, stdio: ["ignore", "pipe", "ignore"] },
    );
    children.push(root);
    const stranger = spawn(process.execPath, ["-e", SPIN], { detached: true, stdio: "ignore" });
    children.push(stranger);
    let out = "";
    root.stdout?.on("data", (b) => {
      out += b;
    });
    const descendant = Number(await waitFor("the root's busy child", () => /^(\d+)\n/.exec(out)?.[1]));
    // both spin from here: measure over a second
    const b0 = ticks(descendant);
    const s0 = ticks(stranger.pid as number);
    const from = readCpuSample(root.pid as number);
    await new Promise((r) => setTimeout(r, 1_000));
    const to = readCpuSample(root.pid as number);
    const ownDescendant = ticks(descendant) - b0;
    const ownStranger = ticks(stranger.pid as number) - s0;
    const own = to.own - from.own;
    expect(ownDescendant).toBeGreaterThan(20);
    expect(ownStranger).toBeGreaterThan(20);
    // the descendant's time is in the own total (the root's few ticks aside); the stranger's is not
    expect(own).toBeGreaterThanOrEqual(ownDescendant - 2);
    expect(own).toBeLessThan(ownDescendant + ownStranger / 2);
    // and the stranger's time is in what others keep busy
    expect(to.busy - from.busy - own).toBeGreaterThanOrEqual(ownStranger * 0.8);
  });
});

describe("onBattery", () => {
  let dir: string;
  afterEach(() => rm(dir, { recursive: true, force: true }));

  async function supplies(s: Record<string, Record<string, string>>) {
    dir = await mkdtemp(join(tmpdir(), "power-supply-"));
    for (const [name, files] of Object.entries(s)) {
      await mkdir(join(dir, name));
      for (const [file, value] of Object.entries(files)) await writeFile(join(dir, name, file), `${value}\n`);
    }
    return dir;
  }

  it("is true when a battery discharges and the mains (or USB) supply is offline", async () => {
    expect(await onBattery(await supplies({ AC: { type: "Mains", online: "0" }, BAT0: { type: "Battery", status: "Discharging" } }))).toBe(
      true,
    );
    await rm(dir, { recursive: true });
    expect(await onBattery(await supplies({ ucsi: { type: "USB", online: "0" }, BAT1: { type: "Battery", status: "Discharging" } }))).toBe(
      true,
    );
  });

  it("is false on mains, with a battery charging or full, without a battery, or without any supply", async () => {
    const cases: Record<string, Record<string, string>>[] = [
      { AC: { type: "Mains", online: "1" }, BAT0: { type: "Battery", status: "Discharging" } },
      { AC: { type: "Mains", online: "0" }, ucsi: { type: "USB", online: "1" }, BAT0: { type: "Battery", status: "Discharging" } },
      { AC: { type: "Mains", online: "0" }, BAT0: { type: "Battery", status: "Full" } },
      { AC: { type: "Mains", online: "0" } },
      {},
    ];
    for (const c of cases) {
      expect(await onBattery(await supplies(c))).toBe(false);
      await rm(dir, { recursive: true });
    }
    dir = join(tmpdir(), "no-such-power-supply-dir");
    expect(await onBattery(dir)).toBe(false);
  });
});
