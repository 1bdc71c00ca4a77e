/**
 * What owner-first watches, read from Linux: the machine's CPU time and the node's own share of it
 * (/proc), and whether the machine runs on battery (/sys/class/power_supply). The node's own
 * processes are a root process (the daemon) and its descendants (llama-server, rpc-server),
 * found by walking the parent ids in /proc/<pid>/stat.
 */
import { readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { CpuSample } from "./ownerWatch.js";

/** The machine's busy and total CPU time from /proc/stat's first line (clock ticks, all CPUs). */
function machineTime(stat: string): { busy: number; total: number } {
  // cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest time is in user already)
  const f = (stat.slice(0, stat.indexOf("\n")).trim().split(/\s+/).slice(1, 9) as string[]).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** A process's parent and CPU time (its own, and that of its children it has reaped), or undefined if it is gone. */
function processTime(stat: string): { ppid: number; ticks: number } | undefined {
  // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
  const close = stat.lastIndexOf(")");
  if (close < 0) return undefined;
  const f = stat.slice(close + 2).split(" ");
  const n = (i: number) => Number(f[i] ?? 0);
  return { ppid: n(1), ticks: n(11) + n(12) + n(13) + n(14) };
}

/**
 * One sample of the machine's CPU time and of `rootPid`'s process tree. Counting the reaped
 * children's time keeps the own total from dropping when one of the node's processes ends.
 * Synchronous: /proc is read from memory, and a few hundred small reads take a millisecond or two,
 * less than the thread-pool round trips of asynchronous ones.
 */
export function readCpuSample(rootPid: number, proc = "/proc"): CpuSample {
  const at = performance.now();
  const processes = new Map<number, { ppid: number; ticks: number }>();
  for (const pid of readdirSync(proc)) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try {
      stat = readFileSync(join(proc, pid, "stat"), "utf8");
    } catch {
      continue; // it ended meanwhile
    }
    const p = processTime(stat);
    if (p) processes.set(Number(pid), p);
  }
  // the machine's counters last, so that they cover every process read before them
  const { busy, total } = machineTime(readFileSync(join(proc, "stat"), "utf8"));
  const children = new Map<number, number[]>();
  for (const [pid, p] of processes) {
    const siblings = children.get(p.ppid);
    if (siblings) siblings.push(pid);
    else children.set(p.ppid, [pid]);
  }
  let own = 0;
  const queue = [rootPid];
  for (let pid = queue.pop(); pid !== undefined; pid = queue.pop()) {
    own += processes.get(pid)?.ticks ?? 0;
    queue.push(...(children.get(pid) ?? []));
  }
  return { at, busy, total, own };
}

/**
 * Whether the machine runs on battery: a battery discharging while its mains (or USB) supply is
 * offline. A machine without a battery, or without a supply that says so, never is.
 */
export async function onBattery(dir = "/sys/class/power_supply"): Promise<boolean> {
  const supplies = await readdir(dir).catch(() => [] as string[]);
  const read = (name: string, file: string) =>
    readFile(join(dir, name, file), "utf8")
      .then((s) => s.trim())
      .catch(() => "");
  let discharging = false;
  let mainsOffline = false;
  for (const name of supplies) {
    const type = await read(name, "type");
    if (type === "Battery" && (await read(name, "status")) === "Discharging") discharging = true;
    if (type === "Mains" || type === "USB") {
      const online = await read(name, "online");
      if (online === "1") return false;
      if (online === "0") mainsOffline = true;
    }
  }
  return discharging && mainsOffline;
}
