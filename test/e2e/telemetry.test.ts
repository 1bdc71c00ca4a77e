/**
 * Zero telemetry, checked: `sharedllm up` (coordinator, node daemon, llama-server, dev chain) runs
 * in a network namespace of its own under strace, serves a chat and a stream, and stops; every
 * connection any of its processes tried to open (connect, and datagrams sent to an address) is
 * read from strace's record. Only the system's own loopback endpoints appear: no DNS lookup, no
 * address beyond the machine, no loopback port that the system itself does not listen on.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { tempPaths, waitFor } from "../helpers.ts";
import { canUseNetns } from "../hosts/netns.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const hasStrace = spawnSync("strace", ["-V"]).status === 0;

/** Every socket destination in an strace record (`-e trace=connect,sendto,sendmsg`), as address and port. */
function destinations(record: string): { family: "inet" | "inet6"; address: string; port: number }[] {
  const out: { family: "inet" | "inet6"; address: string; port: number }[] = [];
  for (const m of record.matchAll(/sa_family=AF_INET, sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)/g)) {
    out.push({ family: "inet", address: m[2] as string, port: Number(m[1]) });
  }
  for (const m of record.matchAll(/sa_family=AF_INET6, sin6_port=htons\((\d+)\),[^}]*?inet_pton\(AF_INET6, "([^"]+)"/g)) {
    out.push({ family: "inet6", address: m[2] as string, port: Number(m[1]) });
  }
  return out;
}

const loopback = (d: { family: string; address: string }) =>
  d.family === "inet" ? d.address.startsWith("127.") : d.address === "::1" || d.address.startsWith("::ffff:127.");

const ns = `sll-tele-${process.pid % 10000}`;
let up: ChildProcess | undefined;

afterAll(() => {
  if (up?.pid && up.exitCode === null) process.kill(-up.pid, "SIGKILL");
  spawnSync("ip", ["netns", "del", ns]);
});

describe("reading strace's record", () => {
  it("finds every IPv4 and IPv6 destination, however the call went, and what is not loopback", () => {
    const record = [
      '7 connect(18, {sa_family=AF_UNIX, sun_path="/tmp/x.pipe"}, 110) = -1 ENOENT (No such file or directory)',
      '7 connect(26, {sa_family=AF_INET, sin_port=htons(42859), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 EINPROGRESS',
      '8 connect(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = -1 ENETUNREACH',
      '9 sendto(5, "\\x12", 40, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("192.0.2.53")}, 16) = -1 ENETUNREACH',
    ].join("\n");
    const found = destinations(record);
    expect(found).toEqual([
      { family: "inet", address: "127.0.0.1", port: 42859 },
      { family: "inet", address: "192.0.2.53", port: 53 },
      { family: "inet6", address: "2001:db8::1", port: 443 },
    ]);
    expect(found.filter((d) => !loopback(d)).map((d) => d.address)).toEqual(["192.0.2.53", "2001:db8::1"]);
  });
});

// `up` runs on its embedded defaults: the PGlite run covers this file
describe.skipIf(!!process.env.DATABASE_URL || !canUseNetns() || !hasStrace)("zero telemetry", () => {
  it("sharedllm up, serving requests, opens connections only to its own endpoints on this machine", async () => {
    const { home, cleanup } = await tempPaths("sharedllm-telemetry-");
    try {
      execFileSync("ip", ["netns", "add", ns]);
      execFileSync("ip", ["-n", ns, "link", "set", "lo", "up"]);
      const record = join(home, "strace.txt");
      const env: NodeJS.ProcessEnv = { ...process.env, SHAREDLLM_HOME: home };
      delete env.DATABASE_URL;
      // strace follows every process `up` starts (llama-server and the chain too) and records only socket destinations
      const args = ["netns", "exec", ns, "strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg", "-e", "signal=none"];
      up = spawn("ip", [...args, "-o", record, process.execPath, BIN, "up", "--port", "0", "--chain-port", "0"], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
      });
      let stderr = "";
      up.stderr?.on("data", (b) => {
        stderr += b;
      });
      const exited = new Promise<number | null>((r) => up?.on("exit", (code) => r(code)));
      const info = await waitFor(
        "up.json",
        async () => {
          if (up?.exitCode !== null) throw new Error(`sharedllm up exited early:\n${stderr}`);
          return JSON.parse(await readFile(join(home, "up.json"), "utf8")) as { coordinatorUrl: string; apiKey: string; models: string[] };
        },
        180_000,
        200,
      );
      // a user in the namespace: a whole answer and a stream
      const client = `
        const [url, key, model] = process.argv.slice(1);
        for (const stream of [false, true]) {
          const res = await fetch(url + "/v1/chat/completions", {
            method: "POST",
            headers: { authorization: "Bearer " + key, "content-type": "application/json" },
            body: JSON.stringify({ model, stream, max_tokens: 8, messages: [{ role: "user", content: "Hello!" }] }),
          });
          if (res.status !== 200) throw new Error("HTTP " + res.status);
          await res.text();
        }`;
      const run = spawnSync(
        "ip",
        [
          "netns",
          "exec",
          ns,
          process.execPath,
          "--input-type=module",
          "-e",
          client,
          info.coordinatorUrl,
          info.apiKey,
          info.models[0] as string,
        ],
        { encoding: "utf8", timeout: 120_000 },
      );
      expect(run.stderr).toBe("");
      expect(run.status).toBe(0);
      // what the system listens on, while it runs: its own endpoints
      const listening = new Set(
        execFileSync("ip", ["netns", "exec", ns, "ss", "-ltnH"], { encoding: "utf8" })
          .trim()
          .split("\n")
          .map((line) =>
            Number(/:(\d+)\s/.exec(line.trim().split(/\s+/)[3] ?? "")?.[1] ?? /:(\d+)$/.exec(line.trim().split(/\s+/)[3] ?? "")?.[1]),
          ),
      );
      process.kill(-(up.pid as number), "SIGINT");
      expect(await exited).toBe(0);

      const seen = destinations(await readFile(record, "utf8"));
      // the record holds the system's own traffic: the node reached its coordinator, the coordinator the chain
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.filter((d) => !loopback(d))).toEqual([]);
      expect(seen.filter((d) => d.port === 53)).toEqual([]);
      expect([...new Set(seen.map((d) => d.port))].filter((port) => !listening.has(port))).toEqual([]);
    } finally {
      await cleanup();
    }
  }, 300_000);
});
