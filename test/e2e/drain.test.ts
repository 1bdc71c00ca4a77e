/**
 * A coordinator that is told to stop (SIGTERM, as a rolling restart does) drains: it refuses new
 * requests with 503, lets the streams in flight finish, then exits. Real process
 * (`sharedllm coordinator start`), a simulated node streaming slowly.
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { JobStart, NodeFrame } from "@sharedllm/protocol";
import { afterEach, expect, it } from "vitest";
import { tempPaths, waitFor } from "../helpers.ts";
import { SimNode } from "../simNode.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** 20 tokens, one every 100 ms: a stream that is still running when the stop comes. */
function slowly(job: JobStart, send: (f: NodeFrame) => void): void {
  let i = 0;
  const timer = setInterval(() => {
    if (i === 20) {
      clearInterval(timer);
      send({ type: "job.end", jobId: job.jobId, usage: { prompt_tokens: 3, completion_tokens: 20, total_tokens: 23 } });
      return;
    }
    i++;
    const data = JSON.stringify({ choices: [{ index: 0, delta: { content: ` t${i}` } }] });
    send({ type: "job.chunk", jobId: job.jobId, data, tokens: [i] });
  }, 100);
}

it("a coordinator stopped mid-stream refuses new requests and finishes the stream, then exits", async () => {
  const { home, cleanup } = await tempPaths("sharedllm-drain-");
  cleanups.push(cleanup);
  const env: NodeJS.ProcessEnv = { ...process.env, SHAREDLLM_HOME: home };
  delete env.DATABASE_URL;
  const child = spawn(process.execPath, [BIN, "coordinator", "start", "--port", "0"], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (b) => {
    stderr += b;
  });
  const exited = new Promise<number | null>((r) => child.once("exit", r));
  cleanups.push(() => {
    if (child.exitCode === null) child.kill("SIGKILL");
  });
  const info = await waitFor(
    "the coordinator",
    async () => JSON.parse(await readFile(join(home, "coordinator.json"), "utf8")) as { url: string; apiKey: string },
    60_000,
    100,
  );
  const { joinToken } = JSON.parse(await readFile(join(home, "secrets.json"), "utf8")) as { joinToken: string };
  const sim = new SimNode({ coordinatorUrl: info.url, joinToken, models: ["sim-model"], onJob: slowly });
  await sim.start();
  cleanups.push(() => sim.stop());
  const chat = (stream: boolean) =>
    fetch(`${info.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${info.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "sim-model", stream, max_tokens: 20, messages: [{ role: "user", content: "go" }] }),
    });

  const res = await chat(true);
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let text = dec.decode((await reader.read()).value);
  child.kill("SIGTERM");
  await waitFor("the stop to begin", () => stderr.includes("stopping"), 10_000);
  // a new request while it drains: refused, to be sent again elsewhere
  const refused = await chat(false);
  expect(refused.status).toBe(503);
  expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/stopping/);
  // the stream in flight runs to its end
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += dec.decode(value);
  }
  expect(text).toContain(" t20");
  expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
  expect(await exited).toBe(0);
}, 60_000);
