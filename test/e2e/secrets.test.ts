/**
 * The join token stays out of view: `site join --background` leaves it off the daemon's command
 * line (which any local user can read in /proc or ps), the daemon reads it from the node's 0600
 * config, and the systemd unit `--service` writes carries no token.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { daemonArgs, serviceUnit } from "@sharedllm/cli";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { isAlive } from "@sharedllm/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");
let coordinator: Coordinator;
let db: TestDatabase;
let home: Awaited<ReturnType<typeof tempPaths>>;
let daemonPid: number | undefined;

beforeAll(async () => {
  db = await testDatabase();
  home = await tempPaths("sharedllm-secrets-");
  coordinator = await startCoordinator({ host: "127.0.0.1", port: 0, ...db, joinToken, logger: quietLogger() });
});
afterAll(async () => {
  if (daemonPid && isAlive(daemonPid)) {
    process.kill(daemonPid, "SIGTERM");
    await waitFor("the background daemon to stop", () => !isAlive(daemonPid as number), 30_000).catch(() =>
      process.kill(-(daemonPid as number), "SIGKILL"),
    );
  }
  await coordinator?.close();
  await db?.cleanup();
  await home?.cleanup();
});

const registrations = async (nodeId: string) =>
  (await coordinator.db.selectFrom("events").select("id").where("kind", "=", "node.registered").where("node_id", "=", nodeId).execute())
    .length;

describe("the join token", () => {
  it("is not on the background daemon's command line; the daemon reads it from the 0600 config", async () => {
    const child = spawn(
      process.execPath,
      [BIN, "site", "join", coordinator.url, "--token", joinToken, "--background", "--no-multicast", "--no-owner-first"],
      {
        env: { ...process.env, SHAREDLLM_HOME: home.home },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    child.stdout.on("data", (b) => {
      out += b;
    });
    child.stderr.on("data", (b) => {
      out += b;
    });
    const code = await new Promise((r) => child.on("exit", r));
    expect(code, out).toBe(0);
    const m = /node (0x[0-9a-f]{40}) joined .*\(pid (\d+),/.exec(out);
    expect(m, out).toBeTruthy();
    const id = m?.[1] as string;
    daemonPid = Number(m?.[2]);

    const cmdline = (await readFile(`/proc/${daemonPid}/cmdline`, "utf8")).split("\0");
    expect(cmdline).toContain("join");
    expect(cmdline.join(" ")).not.toContain(joinToken);
    // the daemon registers again with the token it read from the config
    await waitFor("the background daemon to register with the token from its config", async () => (await registrations(id)) >= 2, 30_000);

    const config = join(home.home, "node-config.json");
    expect((await stat(config)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(config, "utf8")).joinToken).toBe(joinToken);
  });

  it("is not in the systemd unit", () => {
    const args = daemonArgs(["http://10.0.0.1:8787", "--token", joinToken, "--service", "--slots", "3", `--token=${joinToken}`]);
    expect(args).toEqual(["http://10.0.0.1:8787", "--slots", "3"]);
    const unit = serviceUnit("/home/u/.sharedllm", args);
    expect(unit).toContain("site join 'http://10.0.0.1:8787' '--slots' '3'");
    expect(unit).not.toContain(joinToken);
  });
});
