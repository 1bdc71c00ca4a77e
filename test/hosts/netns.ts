/**
 * Linux network namespaces for multi-host tests: each "host" is a namespace with a veth into one
 * bridge in the root namespace (where the test and the coordinator run). Needs root; the suite's
 * CI runs as root.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { join } from "node:path";

const DELAY = join(import.meta.dirname, "delay.py");
const TXCSUM = join(import.meta.dirname, "txcsum.py");

export const canUseNetns = (): boolean => process.getuid?.() === 0;

function ip(...args: string[]) {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export interface Host {
  name: string;
  ns: string;
  address: string;
  /** runs a command in the namespace (its own process group) */
  spawn(command: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess;
}

export class Lan {
  readonly hosts: Host[] = [];
  private readonly namespaces: string[] = [];
  private readonly children: ChildProcess[] = [];
  readonly bridge: string;
  readonly gateway: string;

  constructor(
    private readonly id = (process.pid % 1000).toString(),
    subnet = `10.${200 + (process.pid % 50)}.${process.pid % 250}`,
  ) {
    this.bridge = `sllbr${this.id}`;
    this.gateway = `${subnet}.1`;
    this.subnet = subnet;
    ip("link", "add", this.bridge, "type", "bridge");
    ip("addr", "add", `${this.gateway}/24`, "dev", this.bridge);
    ip("link", "set", this.bridge, "up");
  }

  readonly subnet: string;

  /**
   * A host on the bridge. `multicast: false` leaves it without a multicast route and turns
   * multicast off on its link; `delayMs` puts it behind a userspace forwarder that holds every
   * frame that long each way (in a namespace of its own between the host and the bridge).
   */
  async addHost(name: string, opts: { multicast?: boolean; delayMs?: number } = {}): Promise<Host> {
    const n = this.hosts.length + 2;
    const ns = `sll-${this.id}-${name}`;
    const outer = `sllv${this.id}h${n}`;
    const inner = `sllp${this.id}h${n}`;
    ip("netns", "add", ns);
    this.namespaces.push(ns);
    ip("link", "add", outer, "type", "veth", "peer", "name", inner);
    ip("link", "set", inner, "netns", ns);
    if (opts.delayMs !== undefined) {
      // host <-> [fwd: a | delay | b] <-> bridge
      const fwd = `sll-${this.id}-${name}-fwd`;
      const a = `sllfa${this.id}h${n}`;
      const b = `sllfb${this.id}h${n}`;
      ip("netns", "add", fwd);
      this.namespaces.push(fwd);
      ip("link", "set", outer, "netns", fwd);
      ip("netns", "exec", fwd, "ip", "link", "set", outer, "name", a);
      ip("link", "add", outer, "type", "veth", "peer", "name", b);
      ip("link", "set", b, "netns", fwd);
      for (const dev of [a, b]) ip("netns", "exec", fwd, "ip", "link", "set", dev, "up");
      execFileSync("ip", ["netns", "exec", fwd, "python3", TXCSUM, a, b]);
      const forwarder = spawn("ip", ["netns", "exec", fwd, "python3", DELAY, a, b, String(opts.delayMs)], {
        stdio: ["ignore", "pipe", "inherit"],
        detached: true,
      });
      this.children.push(forwarder);
      await new Promise((resolve) => forwarder.stdout?.once("data", resolve));
    }
    ip("link", "set", outer, "master", this.bridge);
    ip("link", "set", outer, "up");
    execFileSync("python3", [TXCSUM, outer]);
    const address = `${this.subnet}.${n}`;
    ip("netns", "exec", ns, "ip", "addr", "add", `${address}/24`, "dev", inner);
    ip("netns", "exec", ns, "ip", "link", "set", inner, "up");
    ip("netns", "exec", ns, "ip", "link", "set", "lo", "up");
    execFileSync("ip", ["netns", "exec", ns, "python3", TXCSUM, inner]);
    if (opts.multicast === false) ip("netns", "exec", ns, "ip", "link", "set", inner, "multicast", "off");
    else ip("netns", "exec", ns, "ip", "route", "add", "224.0.0.0/4", "dev", inner);
    const host: Host = {
      name,
      ns,
      address,
      spawn: (command, args, env) => {
        const child = spawn("ip", ["netns", "exec", ns, command, ...args], {
          env: { ...process.env, ...env },
          stdio: ["ignore", "pipe", "pipe"],
          detached: true,
        });
        this.children.push(child);
        return child;
      },
    };
    this.hosts.push(host);
    return host;
  }

  /** Kills every process started in the hosts, then removes the namespaces and the bridge. */
  async destroy(): Promise<void> {
    for (const c of this.children) {
      if (c.pid && c.exitCode === null && c.signalCode === null) {
        try {
          process.kill(-c.pid, "SIGKILL");
        } catch {}
      }
    }
    await Promise.all(
      this.children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once("exit", r)) : undefined)),
    );
    for (const ns of this.namespaces) {
      try {
        ip("netns", "delete", ns);
      } catch {}
    }
    try {
      ip("link", "delete", this.bridge);
    } catch {}
  }
}
