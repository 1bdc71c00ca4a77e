/**
 * A worker's rpc-server (the real one, built with our engine patch) is reachable by this user
 * through its private Unix socket and by nobody else: no TCP port, and another local user cannot
 * open the socket.
 */
import { spawn } from "node:child_process";
import { readdir, readFile, readlink, stat } from "node:fs/promises";
import net from "node:net";
import { dirname } from "node:path";
import { tempPaths } from "@sharedllm/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { findEngine } from "../engine/build.js";
import { resolvePaths } from "../paths.js";
import { type RpcServer, startRpcServer } from "./rpcServer.js";

const stops: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const s of stops.reverse()) await s();
});

async function start(): Promise<RpcServer> {
  const engine = await findEngine(resolvePaths().cache);
  if (!engine) throw new Error("engine not built (globalSetup builds it)");
  const tmp = await tempPaths();
  stops.push(tmp.cleanup);
  const rpc = await startRpcServer({ engine, cache: tmp.home, logDir: tmp.home, threads: 1 });
  stops.push(rpc.stop);
  return rpc;
}

/** The inodes of the TCP sockets (IPv4 and IPv6) listening in this network namespace. */
async function tcpListeners(): Promise<Set<string>> {
  const inodes = new Set<string>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const rows = (await readFile(file, "utf8").catch(() => "")).trim().split("\n").slice(1);
    for (const cols of rows.map((r) => r.trim().split(/\s+/))) if (cols[3] === "0A") inodes.add(cols[9] as string);
  }
  return inodes;
}

async function socketInodes(pid: number): Promise<string[]> {
  const fds = await readdir(`/proc/${pid}/fd`);
  const links = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")));
  return links.flatMap((l) => /^socket:\[(\d+)\]$/.exec(l)?.[1] ?? []);
}

describe.skipIf(process.platform !== "linux")("a worker's rpc-server", () => {
  it("listens on a 0600 Unix socket in a 0700 folder, on no TCP port, and its own user reaches it", async () => {
    const rpc = await start();
    if (!("path" in rpc.address)) throw new Error("expected a Unix socket");
    expect((await stat(dirname(rpc.address.path))).mode & 0o777).toBe(0o700);
    expect((await stat(rpc.address.path)).mode & 0o777).toBe(0o600);
    const listening = await tcpListeners();
    expect((await socketInodes(rpc.supervisor.pid as number)).filter((i) => listening.has(i))).toEqual([]);
    const own = net.connect(rpc.address);
    await new Promise<void>((resolve, reject) => own.once("connect", resolve).once("error", reject));
    own.destroy();
  });

  it.skipIf(process.getuid?.() !== 0)("cannot be opened by another local user", async () => {
    const rpc = await start();
    // another local user (nobody) tries to connect and speak RPC
    const script = `const s = require("node:net").connect(${JSON.stringify(rpc.address)}, () => { s.write("GGML"); console.log("connected"); s.destroy(); }); s.on("error", (e) => console.log(e.code));`;
    const other = spawn(process.execPath, ["-e", script], { uid: 65534, gid: 65534, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    other.stdout.on("data", (b) => {
      out += b;
    });
    await new Promise((r) => other.once("exit", r));
    expect(out.trim()).toBe("EACCES");
    expect(await rpc.acceptedConnections()).toBe(0);
  });

  it("removes its socket folder when it stops", async () => {
    const rpc = await start();
    if (!("path" in rpc.address)) throw new Error("expected a Unix socket");
    await rpc.stop();
    await expect(stat(dirname(rpc.address.path))).rejects.toThrow(/ENOENT/);
  });
});
