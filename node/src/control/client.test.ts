import { once } from "node:events";
import { createServer, type Socket } from "node:net";
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

  it("hands its jobs in flight off: aborted with no frame for them, the coordinator told once; a later hello says why it takes none", async () => {
    const [nodeEnd, coordinatorEnd] = channelPair();
    const received: { type: string; accepting?: boolean; reason?: string; handOff?: boolean }[] = [];
    coordinatorEnd.onMessage((text) => {
      const frame = JSON.parse(text) as { type: string; nodeId: string };
      received.push(frame);
      if (frame.type !== "hello") return;
      coordinatorEnd.send(
        JSON.stringify({ type: "welcome", protocol: CONTROL_PROTOCOL_VERSION, nodeId: frame.nodeId, heartbeatIntervalMs: 60_000 }),
      );
    });
    const aborted: string[] = [];
    let dials = 0;
    const [nodeEnd2, coordinatorEnd2] = channelPair();
    coordinatorEnd2.onMessage((text) => received.push(JSON.parse(text)));
    const client = new ControlClient({
      coordinatorUrl: "http://127.0.0.1:1",
      credentials: { get: async () => "session", invalidate: () => {} },
      hello: () => ({ nodeId: "0x0000000000000000000000000000000000000001", engine: { tag: "b0", variant: "cpu" }, models: [], slots: 1 }),
      status: () => ({ load: 0, freeMemoryBytes: 0, loadedModels: [], tokensPerSecond: 0 }),
      // a job that runs until it is aborted, and then sends nothing (as the job runner does)
      runJob: (job, _send, signal) =>
        new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => {
            aborted.push(job.jobId);
            resolve();
          }),
        ),
      loadModel: () => {},
      signReceipt: async (frame) => ({ type: "receipt", receipt: frame.receipt, signature: null, refused: "test" }),
      logger: pino({ level: "silent" }),
      dial: async () => (++dials === 1 ? nodeEnd : nodeEnd2),
      backoffMs: 1,
    });
    await client.start();
    for (const jobId of ["a", "b"])
      coordinatorEnd.send(JSON.stringify({ type: "job.start", jobId, kind: "chat", stream: true, includeUsage: false, request: {} }));
    await waitFor("both jobs running", () => client.activeJobs === 2);
    client.setAvailability(false, "owner_busy", true);
    expect(aborted.sort()).toEqual(["a", "b"]);
    expect(client.activeJobs).toBe(0);
    await waitFor("the frame", () => received.some((f) => f.type === "availability"));
    expect(received.filter((f) => f.type !== "hello")).toEqual([
      { type: "availability", accepting: false, reason: "owner_busy", handOff: true },
    ]);
    // reconnected: the hello says it takes no jobs, and why
    coordinatorEnd.close(1001, "restart");
    await waitFor("the hello on the new channel", () => received.filter((f) => f.type === "hello").length === 2);
    expect(received.at(-1)).toMatchObject({ type: "hello", accepting: false, reason: "owner_busy" });
    await client.close();
  });

  it("a node that is not an auditor refuses audits; an auditor's audit is cancelled by audit.cancel and when the channel closes", async () => {
    const audit = (auditId: string) =>
      JSON.stringify({ type: "audit.start", auditId, kind: "chat", request: {}, claimed: [1, 2], positions: [0, 1], topK: 5 });
    const connect = async (runAudit?: ConstructorParameters<typeof ControlClient>[0]["runAudit"]) => {
      const [nodeEnd, coordinatorEnd] = channelPair();
      const received: { type: string; auditId?: string; message?: string; auditor?: boolean }[] = [];
      coordinatorEnd.onMessage((text) => {
        const frame = JSON.parse(text) as { type: string; nodeId: string };
        received.push(frame);
        if (frame.type !== "hello") return;
        coordinatorEnd.send(
          JSON.stringify({ type: "welcome", protocol: CONTROL_PROTOCOL_VERSION, nodeId: frame.nodeId, heartbeatIntervalMs: 60_000 }),
        );
      });
      const client = new ControlClient({
        coordinatorUrl: "http://127.0.0.1:1",
        credentials: { get: async () => "session", invalidate: () => {} },
        hello: () => ({
          nodeId: "0x0000000000000000000000000000000000000001",
          engine: { tag: "b0", variant: "cpu" },
          models: [],
          slots: 1,
          ...(runAudit && { auditor: true }),
        }),
        status: () => ({ load: 0, freeMemoryBytes: 0, loadedModels: [], tokensPerSecond: 0 }),
        runJob: async () => {},
        runAudit,
        loadModel: () => {},
        signReceipt: async (frame) => ({ type: "receipt", receipt: frame.receipt, signature: null, refused: "test" }),
        logger: pino({ level: "silent" }),
        dial: async () => nodeEnd,
        backoffMs: 60_000,
      });
      await client.start();
      return { client, coordinatorEnd, received };
    };

    const plain = await connect();
    expect(plain.received[0]).not.toHaveProperty("auditor");
    plain.coordinatorEnd.send(audit("a-1"));
    await waitFor("the refusal", () => plain.received.find((f) => f.type === "audit.error"));
    expect(plain.received.at(-1)).toEqual({
      type: "audit.error",
      auditId: "a-1",
      message: "this node does not audit (it was not started with --auditor)",
    });
    await plain.client.close();

    // an audit that runs until it is aborted, and then sends nothing (as the audit runner does)
    const aborted: string[] = [];
    const auditor = await connect(
      (frame, _send, signal) =>
        new Promise<void>((resolve) =>
          signal.addEventListener("abort", () => {
            aborted.push(frame.auditId);
            resolve();
          }),
        ),
    );
    expect(auditor.received[0]).toMatchObject({ type: "hello", auditor: true });
    auditor.coordinatorEnd.send(audit("a-2"));
    auditor.coordinatorEnd.send(audit("a-3"));
    auditor.coordinatorEnd.send(JSON.stringify({ type: "audit.cancel", auditId: "a-2" }));
    await waitFor("the cancelled audit to stop", () => aborted.length === 1);
    expect(aborted).toEqual(["a-2"]);
    auditor.coordinatorEnd.close(1001, "restart");
    await waitFor("the audit in flight to stop with the channel", () => aborted.length === 2);
    expect(aborted).toEqual(["a-2", "a-3"]);
    expect(auditor.received.filter((f) => f.type !== "hello")).toEqual([]);
    await auditor.client.close();
  });

  it("dials again when a coordinator takes the connection and never answers the handshake", async () => {
    // a coordinator going down may accept a connection it then never answers
    const held: Socket[] = [];
    const silent = createServer((socket) => held.push(socket)).listen(0, "127.0.0.1");
    await once(silent, "listening");
    const { port } = silent.address() as { port: number };
    const client = new ControlClient({
      coordinatorUrl: `http://127.0.0.1:${port}`,
      credentials: { get: async () => "session", invalidate: () => {} },
      hello: () => ({ nodeId: "0x0000000000000000000000000000000000000001", engine: { tag: "b0", variant: "cpu" }, models: [], slots: 1 }),
      status: () => ({ load: 0, freeMemoryBytes: 0, loadedModels: [], tokensPerSecond: 0 }),
      runJob: async () => {},
      loadModel: () => {},
      signReceipt: async (frame) => ({ type: "receipt", receipt: frame.receipt, signature: null, refused: "test" }),
      logger: pino({ level: "silent" }),
      dialTimeoutMs: 200,
      backoffMs: 10,
      maxBackoffMs: 10,
    });
    void client.start().catch(() => {});
    await waitFor("a second dial after the first hung", () => held.length >= 2, 5_000);
    await client.close();
    for (const s of held) s.destroy();
    silent.close();
  });
});
