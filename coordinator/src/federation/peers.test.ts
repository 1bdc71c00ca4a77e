import type { JobStart, Usage } from "@sharedllm/protocol";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { Metrics } from "../metrics.js";
import type { FailureCause } from "../units.js";
import type { Federation } from "./federation.js";
import { MAX_EMPTY_EVENTS, Peers, PeerUnit } from "./peers.js";
import { forwardedLine } from "./routing.js";
import type { FederatedJobs } from "./store.js";

const PEER = "0x00000000000000000000000000000000000000b0" as const;

/** A peer whose answer is `respond`'s; what it was sent, and whether the call was aborted, are kept. */
function peerUnit(respond: (body: unknown, signal: AbortSignal) => Response, firstLineTimeoutMs?: number) {
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
  const unit = new PeerUnit(PEER, { federation, jobs, metrics, log: pino({ level: "silent" }), firstLineTimeoutMs });
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
    prompted?: number;
    error?: { message: string; retryable: boolean; status?: number; cause?: FailureCause };
  } = {
    chunks: [],
  };
  return {
    events,
    sink: {
      chunk: (d: string, t: readonly number[] | number) => void events.chunks.push([d, t]),
      prompted: (n: number) => {
        events.prompted = n;
      },
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

  it("a cancel tells the peer by a signed call and reads its answer on to the end line, relaying nothing more; a cut-off fails jobs in flight at once", async () => {
    const s = controlledStream();
    const { unit, calls, rows } = peerUnit((body) => ("kind" in (body as object) ? s.response : Response.json({ cancelled: true })));
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    await until(() => calls.length === 1);
    s.send(forwardedLine({ c: 1, d: "{}", t: [1] }));
    s.send(forwardedLine({ p: 6 }));
    await until(() => events.chunks.length === 1 && events.prompted !== undefined);
    // the prompt the peer told reaches the job, which charges its client for it if it leaves
    expect(events.prompted).toBe(6);
    unit.cancel(start.jobId, { tokens: 1, promptTokens: 6 });
    await until(() => calls.length === 2);
    expect(calls[1]?.body).toEqual({ txid: (calls[0]?.body as { txid?: string } | undefined)?.txid, tokens: 1, promptTokens: 6 });
    // what the peer streamed before it heard, then its end: what it charged for the output streamed
    s.send(forwardedLine({ c: 1, d: "{}", t: [2] }));
    s.send(forwardedLine({ end: { prompt_tokens: 0, completion_tokens: 2, total_tokens: 2 } }));
    await until(() => rows.length === 1);
    expect(rows).toEqual(["cancelled"]);
    expect(events.chunks).toHaveLength(1);
    expect(events.end).toBeUndefined();
    expect(events.error).toBeUndefined();
    expect(unit.active).toBe(0);

    // a client charged nothing (a whole response it left): the call is dropped, nothing is asked
    const u = controlledStream();
    const dropped = peerUnit(() => u.response);
    dropped.unit.dispatch(start, sink().sink);
    await until(() => dropped.calls.length === 1);
    dropped.unit.cancel(start.jobId);
    expect(dropped.calls[0]?.signal.aborted).toBe(true);
    await until(() => dropped.rows.length === 1);
    expect(dropped.calls).toHaveLength(1);

    const t = controlledStream();
    const cut = peerUnit(() => t.response);
    const got = sink();
    cut.unit.dispatch({ ...start, jobId: "job_2" }, got.sink);
    await until(() => cut.calls.length === 1);
    cut.unit.failJobs("revoked");
    expect(got.events.error).toMatchObject({ retryable: true, message: expect.stringMatching(/cut off \(revoked\)/) });
    expect(cut.calls[0]?.signal.aborted).toBe(true);
  });

  it("a peer that sends no answer within the timeout is a failed unit (retryable)", async () => {
    const s = controlledStream();
    const { unit, calls } = peerUnit(() => s.response, 50);
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    await until(() => events.error !== undefined);
    expect(events.error).toMatchObject({ retryable: true, message: expect.stringMatching(/no answer within 0.05 s/) });
    expect(calls[0]?.signal.aborted).toBe(true);

    // once a line came, the timeout no longer applies
    const t = controlledStream();
    const slow = peerUnit(() => t.response, 50);
    const got = sink();
    slow.unit.dispatch(start, got.sink);
    t.send(forwardedLine({ c: 1, d: "{}", t: 1 }));
    await new Promise((r) => setTimeout(r, 120));
    expect(got.events.error).toBeUndefined();
    t.send(forwardedLine({ end: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
    await until(() => got.events.end !== undefined);
  });

  it("a peer that streams more tokens than the job may generate, or endless empty events, is failed", async () => {
    const s = controlledStream();
    const { unit, calls } = peerUnit(() => s.response);
    const { events, sink: k } = sink();
    unit.dispatch(start, k); // max_tokens 8, +16 allowed
    for (let i = 0; i < 30; i++) s.send(forwardedLine({ c: 1, d: "{}", t: 1 }));
    await until(() => events.error !== undefined);
    expect(events.error).toMatchObject({ retryable: true, message: expect.stringMatching(/more than the job's 24 tokens/) });
    expect(events.chunks.length).toBe(24);
    expect(calls[0]?.signal.aborted).toBe(true);

    const e = controlledStream();
    const second = peerUnit(() => e.response);
    const got = sink();
    second.unit.dispatch(start, got.sink);
    e.send(forwardedLine({ c: 1, d: "{}", t: [] }).repeat(MAX_EMPTY_EVENTS + 5));
    await until(() => got.events.error !== undefined);
    expect(got.events.error?.message).toMatch(/without tokens/);
    expect(got.events.chunks.length).toBe(MAX_EMPTY_EVENTS);
  });

  it("a peer's error line reaches the user cleaned, and counts as the client's only for 400 or 413", async () => {
    const s = controlledStream();
    const { unit } = peerUnit(() => s.response);
    const { events, sink: k } = sink();
    unit.dispatch(start, k);
    s.send(forwardedLine({ error: { message: `\u001b[2Jpay me at evil.example${"!".repeat(1000)}`, retryable: false, status: 402 } }));
    await until(() => events.error !== undefined);
    expect(events.error?.retryable).toBe(true);
    expect(events.error?.status).toBeUndefined();
    expect(events.error?.message.includes("\u001b")).toBe(false);
    expect(events.error?.message.length).toBeLessThan(350);
  });
});

describe("Peers", () => {
  const A = "0x00000000000000000000000000000000000000a1";
  const B = "0x00000000000000000000000000000000000000b1";
  const good = { id: "m", sha256: "ab".repeat(32), freeSlots: 2, pricePer1k: { prompt: "1", completion: "2" } };

  function peers(capacity: Record<string, () => Response>, outbound = () => true) {
    const federation = {
      trustedPeers: () => Object.keys(capacity),
      isTrusted: () => true,
      on: () => undefined,
      off: () => undefined,
      signedFetch: async (peer: string) => (capacity[peer] as () => Response)(),
    } as unknown as Federation;
    const jobs = { started: async () => undefined, finished: async () => undefined } as unknown as FederatedJobs;
    const metrics = { federatedJob: () => undefined } as unknown as Metrics;
    return new Peers({ federation, jobs, metrics, log: pino({ level: "silent" }), outbound });
  }

  it("throws out a capacity with one bad entry whole, and pick goes on working for the others", async () => {
    const bad = [
      { ...good, freeSlots: "lots" },
      { ...good, freeSlots: -1 },
      { ...good, pricePer1k: { prompt: "1", completion: "-5" } },
      { ...good, pricePer1k: { prompt: "1", completion: "1e9" } },
      { ...good, sha256: "zz" },
      { ...good, id: "x".repeat(201) },
      null,
    ];
    for (const entry of bad) {
      const p = peers({
        [A]: () => Response.json({ inbound: true, models: [good, entry] }),
        [B]: () => Response.json({ inbound: true, models: [good] }),
      });
      await p.poll();
      expect(p.get(A)?.capacity?.models).toEqual([]);
      expect(p.pick("m")?.address).toBe(B);
    }
    const many = peers({ [A]: () => Response.json({ inbound: true, models: new Array(257).fill(good) }) });
    await many.poll();
    expect(many.pick("m")).toBeUndefined();
    const notBool = peers({ [A]: () => Response.json({ inbound: "yes", models: [good] }) });
    await notBool.poll();
    expect(notBool.pick("m")).toBeUndefined();
  });

  it("reads no more than 256 KB of a capacity answer", async () => {
    const huge = JSON.stringify({ inbound: true, models: [good], pad: "x".repeat(300 * 1024) });
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        c.enqueue(new TextEncoder().encode(huge));
        c.close();
      },
    });
    const p = peers({ [A]: () => new Response(stream) });
    await p.poll();
    expect(p.get(A)?.capacity?.models).toEqual([]);
    expect(p.pick("m")).toBeUndefined();
  });

  it("picks no peer once outbound is turned off, so retries of a job already submitted stay here", async () => {
    let on = true;
    const p = peers({ [A]: () => Response.json({ inbound: true, models: [good] }) }, () => on);
    await p.poll();
    expect(p.pick("m")?.address).toBe(A);
    on = false;
    expect(p.pick("m")).toBeUndefined();
  });
});
