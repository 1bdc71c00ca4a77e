/**
 * `sharedllm coordinator start` in a child process of its own, on a fresh home (its CPU and memory
 * are read from /proc apart from the bench's): its URL, API key and join token once it runs.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "@sharedllm/testkit";

const BIN = join(import.meta.dirname, "..", "cli", "bin", "sharedllm.js");

export interface CoordinatorProcess {
  pid: number;
  url: string;
  apiKey: string;
  joinToken: string;
  /** its home's secrets (another replica of it starts with them) */
  secrets: string;
  /** stops it (SIGINT) and removes its home */
  stop(): Promise<void>;
}

/**
 * Starts one; `databaseUrl`: PostgreSQL, else its embedded database; `secrets`: another
 * coordinator's (its replica: docs/replicas.md). With SHAREDLLM_BENCH_CPU_PROF set to a folder,
 * it runs under `node --cpu-prof` and writes its profile there as it stops.
 */
export async function startCoordinatorProcess(o: {
  prefix: string;
  args?: string[];
  databaseUrl?: string;
  secrets?: string;
}): Promise<CoordinatorProcess> {
  const home = await mkdtemp(join(tmpdir(), o.prefix));
  if (o.secrets) await writeFile(join(home, "secrets.json"), o.secrets, { mode: 0o600 });
  const env: NodeJS.ProcessEnv = { ...process.env, SHAREDLLM_HOME: home };
  if (o.databaseUrl) env.DATABASE_URL = o.databaseUrl;
  else delete env.DATABASE_URL;
  const profile = process.env.SHAREDLLM_BENCH_CPU_PROF;
  const nodeArgs = profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : [];
  const child = spawn(process.execPath, [...nodeArgs, BIN, "coordinator", "start", "--port", "0", ...(o.args ?? [])], {
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise((r) => child.once("exit", r));
  const stop = async () => {
    child.kill("SIGINT");
    await exited;
    await rm(home, { recursive: true, force: true });
  };
  try {
    const info = await waitFor(
      "coordinator",
      async () => JSON.parse(await readFile(join(home, "coordinator.json"), "utf8")) as { url: string; apiKey: string },
      60_000,
      200,
    );
    const secrets = await readFile(join(home, "secrets.json"), "utf8");
    const { joinToken } = JSON.parse(secrets) as { joinToken: string };
    return { pid: child.pid as number, url: info.url, apiKey: info.apiKey, joinToken, secrets, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
