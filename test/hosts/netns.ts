/**
 * Linux network namespaces for multi-host tests: each "host" is a namespace with a veth into one
 * bridge in the root namespace (where the test and the coordinator run). Needs root; the suite's
 * CI runs as root.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";

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

  private readonly subnet: string;

  addHost(name: string): Host {
    const n = this.hosts.length + 2;
    const ns = `sll-${this.id}-${name}`;
    const outer = `sllv${this.id}h${n}`;
    const inner = `sllp${this.id}h${n}`;
    ip("netns", "add", ns);
    ip("link", "add", outer, "type", "veth", "peer", "name", inner);
    ip("link", "set", inner, "netns", ns);
    ip("link", "set", outer, "master", this.bridge);
    ip("link", "set", outer, "up");
    const address = `${this.subnet}.${n}`;
    ip("netns", "exec", ns, "ip", "addr", "add", `${address}/24`, "dev", inner);
    ip("netns", "exec", ns, "ip", "link", "set", inner, "up");
    ip("netns", "exec", ns, "ip", "link", "set", "lo", "up");
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
    for (const h of this.hosts) {
      try {
        ip("netns", "delete", h.ns);
      } catch {}
    }
    try {
      ip("link", "delete", this.bridge);
    } catch {}
  }
}
