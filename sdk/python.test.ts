/**
 * The Python SDK's pytest suite (sdk/python/tests: a real `sharedllm up`, sign-in, keys, a chat
 * through the OpenAI client it hands back, usage and balance), run as part of `npm test` through
 * its runner, which makes a virtualenv and installs the package from PyPI. It starts its own system
 * on the embedded database, so the PostgreSQL run of the suite skips it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const skip = !!process.env.DATABASE_URL;
let running: ChildProcess | undefined;

afterAll(() => {
  if (running?.pid && running.exitCode === null) process.kill(-running.pid, "SIGKILL");
});

describe.skipIf(skip)("the Python SDK", () => {
  it("passes its pytest suite against a real coordinator", async () => {
    const runner = join(import.meta.dirname, "python", "run-tests.sh");
    const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
      // its own process group: `sharedllm up` and what it starts go with it if this test times out
      const child = spawn("bash", [runner, "-q"], {
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
        env: { ...process.env, SHAREDLLM_UP_TIMEOUT: "300" },
      });
      running = child;
      let output = "";
      child.stdout.on("data", (b) => {
        output += b;
      });
      child.stderr.on("data", (b) => {
        output += b;
      });
      // "close": its output is read to the end, not only its exit seen
      child.once("close", (code) => resolve({ code, output }));
    });
    if (code !== 0) process.stderr.write(output.slice(-8000));
    expect(code).toBe(0);
    expect(output).toMatch(/Python SDK tests passed/);
  }, 600_000);
});
