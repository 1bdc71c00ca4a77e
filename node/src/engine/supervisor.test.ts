import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { tempPaths, waitFor } from "@sharedllm/testkit";
import { afterEach, describe, expect, it } from "vitest";
import { ModelStore } from "../models/store.js";
import { resolvePaths } from "../paths.js";
import { findEngine } from "./build.js";
import { type LlamaServer, startLlamaServer } from "./llamaServer.js";
import { Supervisor } from "./supervisor.js";

const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

async function llama(): Promise<LlamaServer> {
  const { cache } = resolvePaths();
  const engine = await findEngine(cache);
  if (!engine) throw new Error("engine not built (globalSetup builds it)");
  const tmp = await tempPaths();
  const store = new ModelStore(cache);
  const server = await startLlamaServer({
    engine,
    modelId: "smollm2-135m-instruct",
    modelPath: await store.path("smollm2-135m-instruct"),
    slots: 1,
    contextPerSlot: 512,
    logDir: join(tmp.home, "logs"),
  });
  stops.push(async () => {
    await server.supervisor.stop();
    await tmp.cleanup();
  });
  return server;
}

describe("supervised llama-server", () => {
  it("answers only requests with its own API key, which no other user can read off its command line", async () => {
    const server = await llama();
    const body = JSON.stringify({ prompt: "Hi", n_predict: 1 });
    const ask = (headers: Record<string, string>) =>
      fetch(`${server.url}/completion`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
    // another local user who found the port
    expect((await ask({})).status).toBe(401);
    expect((await ask({ authorization: "Bearer guessed" })).status).toBe(401);
    expect((await fetch(`${server.url}/v1/models`)).status).toBe(401);
    expect((await ask({ authorization: `Bearer ${server.apiKey}` })).status).toBe(200);
    const cmdline = (await readFile(`/proc/${server.supervisor.pid}/cmdline`, "utf8").catch(() => "")).split("\0");
    expect(cmdline.some((arg) => arg.includes(server.apiKey))).toBe(false);
  });

  it("is restarted with growing back-off after it dies, on the same port", async () => {
    const server = await llama();
    const delays: number[] = [];
    server.supervisor.on("restarting", (ms) => delays.push(ms));
    for (let i = 1; i <= 2; i++) {
      const pid = server.supervisor.pid as number;
      process.kill(pid, "SIGKILL");
      await waitFor(`restart ${i}`, () => server.supervisor.restarts === i && server.supervisor.ready, 30_000);
      expect(server.supervisor.pid).not.toBe(pid);
      expect((await fetch(`${server.url}/health`)).ok).toBe(true);
    }
    expect(delays).toHaveLength(2);
    expect(delays[1]).toBeGreaterThan(delays[0] as number);
  });

  it("fails fast with the log tail when the process exits during start-up", async () => {
    const { cache } = resolvePaths();
    const engine = await findEngine(cache);
    const tmp = await tempPaths();
    stops.push(tmp.cleanup);
    const started = Date.now();
    const err = await startLlamaServer({
      engine: engine as NonNullable<typeof engine>,
      modelId: "missing",
      modelPath: "/nonexistent/model.gguf",
      slots: 1,
      contextPerSlot: 512,
      logDir: join(tmp.home, "logs"),
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/exited during start-up[\s\S]*model/);
    expect(Date.now() - started).toBeLessThan(15_000);
  });
});

describe("Supervisor.stop", () => {
  it("SIGKILLs a process that ignores SIGTERM after the timeout, and reaps it", async () => {
    const tmp = await tempPaths();
    stops.push(tmp.cleanup);
    const flag = join(tmp.home, "trapped");
    const sup = new Supervisor({
      name: "stubborn",
      command: "sh",
      args: ["-c", `trap '' TERM; touch ${flag}; while :; do sleep 0.1; done`],
      logFile: join(tmp.home, "stubborn.log"),
      // ready once the trap is set
      healthCheck: async () => existsSync(flag),
      stopTimeoutMs: 300,
    });
    await sup.start();
    const pid = sup.pid as number;
    const started = Date.now();
    await sup.stop();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe("Supervisor.restart", () => {
  it("ends the process and starts it again with its arguments prepared anew", async () => {
    const tmp = await tempPaths();
    stops.push(tmp.cleanup);
    let prepared = 0;
    const sup = new Supervisor({
      name: "sleeper",
      command: "sh",
      args: ["-c", "while :; do sleep 0.1; done"],
      logFile: join(tmp.home, "sleeper.log"),
      healthCheck: async () => true,
      prepare: async () => {
        prepared++;
        return [];
      },
      backoffMs: 10,
    });
    stops.push(() => sup.stop());
    await sup.start();
    const pid = sup.pid as number;
    sup.restart();
    sup.restart();
    expect(sup.ready).toBe(false);
    await waitFor("the process started again", () => sup.ready && sup.restarts === 1);
    expect(sup.pid).not.toBe(pid);
    expect(prepared).toBe(2);
  });
});
