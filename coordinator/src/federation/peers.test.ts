import type { JobStart, Usage } from "@sharedllm/protocol";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { Metrics } from "../metrics.js";
import type { FailureCause } from "../units.js";
import type { Federation } from "./federation.js";
import { PeerUnit } from "./peers.js";
import { forwardedLine } from "./routing.js";
import type { FederatedJobs } from "./store.js";

const PEER = "0x00000000000000000000000000000000000000b0" as const;

/** A peer whose answer is `respond`'s; what it was sent, and whether the call was aborted, are kept. */
function peerUnit(respond: (body: unknown, signal: AbortSignal) => Response) {
  const calls: { body: unknown; signal: AbortSignal }[] = [];
  const rows: string[] = [];
  const federation = {
    signedFetch: async (_peer: string, _method: string, _path: string, body: unknown, init: { signal: AbortSignal }) => {
      calls.push({ body, signal: init.signal });
      return respond(body, init.signal);
    },
  } as unknown as Federation;
  const jobs = {
    started: async () => undefined,
    finished: async (_k: unknown, status: string) => void rows.push(status),
  } as unknown as FederatedJobs;
  const metrics = { federatedJob: () => undefined } as unknown as Metrics;
  const unit = new PeerUnit(PEER, { federation, jobs, metrics, log: pino({ level: "silent" }) });
  return { unit, calls, rows };
}

/** A streamed answer whose lines the test pushes, and may end or break. */
function controlledStream() {
  let ctl!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      ctl = c;
    },
  });
  const enc = new TextEncoder();
  return {
    response: new Response(body, { status: 200 }),
    send: (text: string) => ctl.enqueue(enc.encode(text)),
    close: () => ctl.close(),
  };
}

function sink() {
  const events: {
    chunks: [string, unknown][];
    end?: Usage;
    error?: { message: string; retryable: boolean; status?: number; cause?: FailureCause };
  } = {
    chunks: [],
  };
  return {
    events,
    sink: {
      chunk: (d: string, t: readonly number[] | number) => void events.chunks.push([d, t]),
      end: (u: Usage) => {
        events.end = u;
      },
      error: (e: { message: string; retryable: boolean; status?: number; cause?: FailureCause }) => {
        events.error = e;
      },
    },
  };
}

const start: JobStart = {
  type: "job.start",
  jobId: "job_1",
  kind: "chat",
  stream: true,
  includeUsage: false,
  request: { model: "m", messages: [{ role: "user", content: "hi" }], max_tokens: 8, n_predict: 8 },
};

const until = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(check()).toBe(true);
};

describe("PeerUnit", () => {
  it("forwards the request with a txid and the generation limit, and relays events with their tokens, then the end", async () => {
    const s = controlledStream();
    const { unit, calls, rows } = peerUnit(() => s.response);
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    expect(unit.active).toBe(1);
    s.send(forwardedLine({ c: 1, d: '{"a":1}', t: [7] }) + forwardedLine({ c: 1, d: '{"b":2}', t: 2 }).slice(0, 5));
    s.send(forwardedLine({ c: 1, d: '{"b":2}', t: 2 }).slice(5));
    s.send(forwardedLine({ end: { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 } }));
    await until(() => events.end !== undefined);
    expect(calls[0]?.body).toMatchObject({
      kind: "chat",
      generationLimit: 8,
      body: { model: "m", max_tokens: 8 },
      txid: expect.any(String),
    });
    expect((calls[0]?.body as { body: Record<string, unknown> } | undefined)?.body.n_predict).toBeUndefined();
    expect(events.chunks).toEqual([
      ['{"a":1}', [7]],
      ['{"b":2}', 2],
    ]);
    expect(events.end).toEqual({ prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });
    expect(unit.active).toBe(0);
    await until(() => rows.length === 1);
    expect(rows).toEqual(["completed"]);
  });

  it("a stream that ends before its end, or a line it cannot read, is a failed unit (retryable)", async () => {
    const s = controlledStream();
    const { unit } = peerUnit(() => s.response);
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    s.send(forwardedLine({ c: 1, d: "{}", t: 1 }));
    s.close();
    await until(() => events.error !== undefined);
    expect(events.error).toMatchObject({ retryable: true, cause: "node_lost", message: expect.stringMatching(/ended its stream/) });

    const bad = controlledStream();
    const second = peerUnit(() => bad.response);
    const got = sink();
    second.unit.dispatch(start, got.sink);
    bad.send("not json\n");
    await until(() => got.events.error !== undefined);
    expect(got.events.error?.retryable).toBe(true);
  });

  it("relays the peer's refusal: a bad request as the client's, anything else as retryable", async () => {
    const refusal = (status: number) => () => Response.json({ error: { message: "no", code: "x" } }, { status });
    for (const [status, expected] of [
      [429, { retryable: true }],
      [400, { retryable: false, status: 400 }],
    ] as const) {
      const { unit } = peerUnit(refusal(status));
      const { events, sink: k } = sink();
      unit.dispatch(start, k);
      await until(() => events.error !== undefined);
      expect(events.error).toMatchObject({ ...expected, message: expect.stringMatching(/refused the job: no/) });
    }
  });

  it("a cancel aborts the call and the sink hears nothing more; a cut-off fails jobs in flight at once", async () => {
    const s = controlledStream();
    const { unit, calls, rows } = peerUnit(() => s.response);
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    await until(() => calls.length === 1);
    unit.cancel(start.jobId);
    expect(calls[0]?.signal.aborted).toBe(true);
    expect(events.error).toBeUndefined();
    await until(() => rows.length === 1);
    expect(rows).toEqual(["cancelled"]);

    const t = controlledStream();
    const cut = peerUnit(() => t.response);
    const got = sink();
    cut.unit.dispatch({ ...start, jobId: "job_2" }, got.sink);
    await until(() => cut.calls.length === 1);
    cut.unit.failJobs("revoked");
    expect(got.events.error).toMatchObject({ retryable: true, message: expect.stringMatching(/cut off \(revoked\)/) });
    expect(cut.calls[0]?.signal.aborted).toBe(true);
  });
});
