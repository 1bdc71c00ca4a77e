/**
 * Runs llama-server for one model on 127.0.0.1, supervised. The model is served
 * under its stable id (`--alias`), so responses name it as the API does. Every
 * request but /health needs this process's own API key (a fresh secret per start,
 * passed in llama-server's environment, which other users cannot read, not on its
 * command line, which they can): another user of the machine gets 401.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import type { Engine } from "./build.js";
import { freePort } from "./freePort.js";
import { Supervisor } from "./supervisor.js";

export interface LlamaServerOptions {
  engine: Engine;
  modelId: string;
  modelPath: string;
  /** parallel sequences (llama-server slots) */
  slots: number;
  /** context tokens per slot */
  contextPerSlot: number;
  /** CPU threads; default: llama.cpp's choice */
  threads?: number;
  port?: number;
  logDir: string;
  /** its log's file name in logDir; default `llama-server-<modelId>.log` */
  logName?: string;
  /** extra llama-server arguments */
  extraArgs?: string[];
  /** arguments decided before every (re)start: a cluster head's `--rpc` and `--tensor-split` */
  prepareArgs?: () => Promise<string[]>;
}

export interface LlamaServer {
  url: string;
  port: number;
  supervisor: Supervisor;
  /** the key every request but /health needs (`Authorization: Bearer <key>`) */
  apiKey: string;
}

export async function startLlamaServer(o: LlamaServerOptions): Promise<LlamaServer> {
  const port = o.port ?? (await freePort());
  const url = `http://127.0.0.1:${port}`;
  const apiKey = randomBytes(32).toString("base64url");
  const args = [
    "--model",
    o.modelPath,
    "--alias",
    o.modelId,
    "--host",
    "127.0.0.1",
    "--port",
    String(port),
    "--parallel",
    String(o.slots),
    "--ctx-size",
    String(o.slots * o.contextPerSlot),
    "--no-webui",
    ...(o.threads ? ["--threads", String(o.threads)] : []),
    ...(o.extraArgs ?? []),
  ];
  const supervisor = new Supervisor({
    name: "llama-server",
    command: o.engine.llamaServer,
    args,
    env: {
      ...process.env,
      LD_LIBRARY_PATH: [o.engine.binDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":"),
      LLAMA_API_KEY: apiKey,
    },
    logFile: join(o.logDir, o.logName ?? `llama-server-${o.modelId}.log`),
    prepare: o.prepareArgs,
    healthCheck: async () => (await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) })).ok,
  });
  await supervisor.start();
  return { url, port, supervisor, apiKey };
}
