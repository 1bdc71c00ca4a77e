/**
 * `sharedllm site join` refuses what cannot work with a clear message and a non-zero exit:
 * a malformed URL, a coordinator that is not there, a wrong join token; and `site scan` a bad range.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { freePort } from "@sharedllm/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, tempPaths, testDatabase } from "../helpers.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
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
    joinToken: randomBytes(32).toString("base64url"),
    logger: quietLogger(),
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
