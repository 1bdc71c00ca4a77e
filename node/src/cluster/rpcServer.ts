/**
 * ggml-rpc-server for the worker role. It has no authentication (the tunnel is the way in), so it
 * listens on a Unix socket in a private folder (0700, socket 0600) that no other local user can
 * open: our engine patch `engine-patches/rpc-unix-socket.patch` adds that to ggml. A bench may ask
 * for a port on 127.0.0.1 instead, to compare with a plain split. Its local tensor cache is on, so
 * a re-formed cluster does not resend weights this worker already holds; the cache lives in the
 * shared cache folder.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Engine } from "../engine/build.js";
import { freePort } from "../engine/freePort.js";
import { Supervisor } from "../engine/supervisor.js";

/** Where rpc-server listens: options for `net.connect`. */
export type RpcAddress = { path: string } | { host: "127.0.0.1"; port: number };

export interface RpcServer {
  address: RpcAddress;
  supervisor: Supervisor;
  logFile: string;
  /** how many connections rpc-server itself has accepted (from its log) */
  acceptedConnections(): Promise<number>;
  /** stops rpc-server and removes its socket folder */
  stop(): Promise<void>;
}

function connects(address: RpcAddress): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(address);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export async function startRpcServer(o: {
  engine: Engine;
  cache: string;
  logDir: string;
  threads?: number;
  /** listen on this port of 127.0.0.1 (0: a free one) instead of a private Unix socket; for benches */
  tcpPort?: number;
}): Promise<RpcServer> {
  // a short path: a Unix socket's path is limited to 107 bytes
  const socketDir = o.tcpPort === undefined ? await mkdtemp(join(tmpdir(), "sharedllm-rpc-")) : undefined;
  const address: RpcAddress = socketDir
    ? { path: join(socketDir, "rpc.sock") }
    : { host: "127.0.0.1", port: o.tcpPort || (await freePort()) };
  // no port for a Unix socket (rpc-server ignores it there)
  const listen = "path" in address ? ["-H", `unix:${address.path}`] : ["-H", address.host, "-p", String(address.port)];
  const logFile = join(o.logDir, "rpc-server.log");
  const supervisor = new Supervisor({
    name: "rpc-server",
    command: o.engine.rpcServer,
    args: [...listen, "-c", ...(o.threads ? ["-t", String(o.threads)] : [])],
    env: {
      ...process.env,
      LD_LIBRARY_PATH: [o.engine.binDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":"),
      LLAMA_CACHE: join(o.cache, "rpc-tensors"),
    },
    logFile,
    // a probing connection would be served as a client: a Unix socket is up once its file is there
    healthCheck: async () => ("path" in address ? existsSync(address.path) : connects(address)),
    // so the socket a crashed run left behind does not pass for the new run's
    prepare: async () => {
      if ("path" in address) await rm(address.path, { force: true });
      return [];
    },
  });
  const stop = async () => {
    await supervisor.stop();
    if (socketDir) await rm(socketDir, { recursive: true, force: true });
  };
  try {
    await supervisor.start();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    address,
    supervisor,
    logFile,
    acceptedConnections: async () => ((await readFile(logFile, "utf8").catch(() => "")).match(/Accepted client connection/g) ?? []).length,
    stop,
  };
}
