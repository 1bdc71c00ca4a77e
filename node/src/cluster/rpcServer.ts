/**
 * ggml-rpc-server for the worker role: bound to 127.0.0.1 only (it has no authentication; the
 * tunnel is the way in), with its local tensor cache on, so a re-formed cluster does not resend
 * weights this worker already holds. The cache lives in the shared cache folder.
 */
import { readFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import type { Engine } from "../engine/build.js";
import { freePort } from "../engine/freePort.js";
import { Supervisor } from "../engine/supervisor.js";

export interface RpcServer {
  port: number;
  supervisor: Supervisor;
  logFile: string;
  /** how many connections rpc-server itself has accepted (from its log) */
  acceptedConnections(): Promise<number>;
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: "127.0.0.1", port });
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
  port?: number;
}): Promise<RpcServer> {
  const port = o.port ?? (await freePort());
  const logFile = join(o.logDir, "rpc-server.log");
  const supervisor = new Supervisor({
    name: "rpc-server",
    command: o.engine.rpcServer,
    args: ["-H", "127.0.0.1", "-p", String(port), "-c", ...(o.threads ? ["-t", String(o.threads)] : [])],
    env: {
      ...process.env,
      LD_LIBRARY_PATH: [o.engine.binDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":"),
      LLAMA_CACHE: join(o.cache, "rpc-tensors"),
    },
    logFile,
    // the log says when it listens; probing with a connection would be served as a client
    healthCheck: async () =>
      (await readFile(logFile, "utf8").catch(() => "")).includes(`endpoint       : 127.0.0.1:${port}`) || connects(port),
  });
  await supervisor.start();
  return {
    port,
    supervisor,
    logFile,
    acceptedConnections: async () => ((await readFile(logFile, "utf8").catch(() => "")).match(/Accepted client connection/g) ?? []).length,
  };
}
