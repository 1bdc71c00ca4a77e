/**
 * `sharedllm site join` refuses what cannot work with a clear message and a non-zero exit:
 * a malformed URL, a coordinator that is not there, a wrong join token; and `site scan` a bad range.
 * A machine that joins takes its owner's say like any node: with a schedule outside its hours it
 * takes no work, and `node status` says why.
 */
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { promisify } from "node:util";
import { type Coordinator, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import { freePort } from "@sharedllm/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { MODEL } from "../system.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");
let coordinator: Coordinator;
let db: TestDatabase;
let home: Awaited<ReturnType<typeof tempPaths>>;

beforeAll(async () => {
  db = await testDatabase();
  home = await tempPaths("sharedllm-sitejoin-");
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...db,
    joinToken,
    logger: quietLogger(),
    // a request no node takes now is refused after a short wait
    queueWaitMs: 1_000,
  });
});
afterAll(async () => {
  await coordinator?.close();
  await db?.cleanup();
  await home?.cleanup();
});

/** Runs the CLI without blocking this process (the coordinator under test answers in it). */
function cli(...args: string[]): Promise<{ status: number | null; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, SHAREDLLM_HOME: home.home },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (b) => {
    stderr += b;
  });
  return new Promise((resolve) => child.on("exit", (status) => resolve({ status, stderr })));
}

describe("sharedllm site join", () => {
  it("says what is wrong and exits non-zero for a bad URL, an absent coordinator or a wrong token", async () => {
    const bad = await cli("site", "join", "not a url", "--token", "x", "--no-owner-first");
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain("is not a coordinator URL");
    const absent = await cli("site", "join", `http://127.0.0.1:${await freePort()}`, "--token", "x", "--no-owner-first");
    expect(absent.status).toBe(1);
    expect(absent.stderr).toContain("cannot reach");
    const wrong = await cli("site", "join", coordinator.url, "--token", "not-the-token", "--no-owner-first");
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toMatch(/refused this machine.*check --token/);
    const noToken = await cli("site", "join", coordinator.url, "--no-owner-first");
    expect(noToken.status).toBe(2);
    expect((await cli("site", "scan", "10.0.0.0/8", "--token", "x")).stderr).toContain("too large to scan");
  });
});

describe("a machine that joined a site", () => {
  it("takes no work outside its --schedule; node status says why", async () => {
    const machine = await tempPaths("sharedllm-sitejoin-schedule-");
    // a window three days from today: never now
    const day = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"][(new Date().getDay() + 3) % 7];
    const args = ["site", "join", coordinator.url, "--token", joinToken, "--no-multicast", "--no-owner-first", "--threads", "1"];
    const child = spawn(process.execPath, [BIN, ...args, "--slots", "1", "--schedule", `${day} 00:00-00:01`], {
      env: { ...process.env, SHAREDLLM_HOME: machine.home },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const exited = new Promise((r) => child.once("exit", r));
    let out = "";
    let err = "";
    child.stdout?.on("data", (b) => {
      out += b;
    });
    child.stderr?.on("data", (b) => {
      err += b;
    });
    try {
      const id = await waitFor(
        "the machine to join",
        () => {
          if (child.exitCode !== null) throw new Error(`site join exited: ${err}`);
          return /node (0x[0-9a-f]{40}) joined/.exec(out)?.[1];
        },
        120_000,
      );
      const unit = await waitFor("the coordinator to see it", () => coordinator.fleet.get(id));
      expect(unit.models.has(MODEL)).toBe(true);
      expect(unit.accepting).toBe(false);
      expect(unit.unavailableReason).toBe("schedule");
      const { secret } = await createApiKey(coordinator.db, "schedule");
      const res = await fetch(`${coordinator.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 4 }),
      });
      expect(res.status).toBe(503);
      const { stdout } = await promisify(execFile)(process.execPath, [BIN, "node", "status"], {
        env: { ...process.env, SHAREDLLM_HOME: machine.home },
      });
      expect(stdout).toContain("taking jobs: no: outside its contribution schedule");
    } finally {
      if (child.exitCode === null) process.kill(-(child.pid as number), "SIGKILL");
      await exited;
      await machine.cleanup();
    }
  }, 180_000);
});
