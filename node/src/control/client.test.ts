import { CONTROL_PROTOCOL_VERSION, channelPair, type JobStart } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { ControlClient } from "./client.js";

describe("control client", () => {
  it("refuses a malformed frame from the coordinator: logged, not acted on; the valid frames after it are", async () => {
    const [nodeEnd, coordinatorEnd] = channelPair();
    coordinatorEnd.onMessage((text) => {
      const frame = JSON.parse(text) as { type: string; nodeId: string };
      if (frame.type !== "hello") return;
      coordinatorEnd.send(
        JSON.stringify({ type: "welcome", protocol: CONTROL_PROTOCOL_VERSION, nodeId: frame.nodeId, heartbeatIntervalMs: 60_000 }),
      );
    });
    const logged: { msg: string; reason?: string }[] = [];
    const acted: string[] = [];
    const jobs: JobStart[] = [];
    const client = new ControlClient({
      coordinatorUrl: "http://127.0.0.1:1",
      credentials: { get: async () => "session", invalidate: () => {} },
      hello: () => ({ nodeId: "0x0000000000000000000000000000000000000001", engine: { tag: "b0", variant: "cpu" }, models: [], slots: 1 }),
      status: () => ({ load: 0, freeMemoryBytes: 0, loadedModels: [], tokensPerSecond: 0 }),
      runJob: async (job) => {
        jobs.push(job);
      },
      loadModel: (frame) => acted.push(`model.load ${frame.model}`),
      signReceipt: async (frame) => {
        acted.push(`receipt.request ${frame.jobId}`);
        return { type: "receipt", receipt: frame.receipt, signature: null, refused: "test" };
      },
      onClusterFrame: (frame) => acted.push(frame.type),
      logger: pino({ level: "info" }, { write: (line: string) => logged.push(JSON.parse(line)) }),
      dial: async () => nodeEnd,
    });
    await client.start();

    const job = { type: "job.start", jobId: "job-1", kind: "chat", stream: false, includeUsage: false, request: { messages: [] } };
    coordinatorEnd.send(JSON.stringify({ ...job, jobId: "no-stream-flag", stream: "yes" }));
    coordinatorEnd.send(JSON.stringify({ type: "model.load", model: "m", source: "default", sha256: "not-a-hash" }));
    coordinatorEnd.send(
      JSON.stringify({ type: "receipt.request", jobId: "job-0", receipt: {}, domain: { chainId: 1, verifyingContract: "0x1" } }),
    );
    coordinatorEnd.send(JSON.stringify({ type: "tunnel.session", sessionId: "s", head: "0x2" }));
    coordinatorEnd.send(JSON.stringify({ type: "shutdown" }));
    coordinatorEnd.send("not json");
    coordinatorEnd.send(JSON.stringify(job));

    // frames arrive in order: once the valid job runs, every frame before it was handled
    await waitFor("the valid job to run", () => jobs.length > 0);
    expect(jobs.map((j) => j.jobId)).toEqual(["job-1"]);
    expect(acted).toEqual([]);
    const refusals = logged.filter((l) => l.msg === "refused a frame from the coordinator").map((l) => l.reason);
    expect(refusals).toHaveLength(6);
    expect(refusals[0]).toMatch(/^malformed frame: .* at stream$/);
    expect(refusals[1]).toMatch(/^malformed frame: .* at sha256$/);
    expect(refusals[5]).toBe("frames must be JSON");
    await client.close();
  });
});
