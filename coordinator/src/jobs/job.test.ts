/** A job's transitions, with fake units, credits, rows and response: retries, continuations, cancels, failures, and the hold on each path. */
import { ApiError, type JobStart, type Usage } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { describe, expect, it } from "vitest";
import type { JobSink, Payees, ServingUnit } from "../units.js";
import { Job, type JobCredits, type JobOutput, MAX_ATTEMPTS, MAX_CONTINUATIONS, type PaidPart } from "./job.js";

const SHA = "a".repeat(64);

class FakeUnit implements ServingUnit {
  readonly models = new Map([["m", { id: "m", sha256: SHA, contextSize: 4096 }]]);
  sink: JobSink | undefined;
  started: JobStart | undefined;
  cancelled: string[] = [];
  /** who this unit says is paid now (a head's split, which may change) */
  paying: string[] | undefined;
  incarnation = 0;
  constructor(readonly id: string) {}
  dispatch(job: JobStart, sink: JobSink): void {
    this.started = job;
    this.sink = sink;
  }
  cancel(jobId: string): void {
    this.cancelled.push(jobId);
  }
  payees(): Payees {
    return { members: (this.paying ?? [this.id]).map((node) => ({ node: node as `0x${string}`, shareBps: 10_000 })) };
  }
}

/** What the client saw, in order. */
class FakeResponse implements JobOutput {
  seen: string[] = [];
  error: ApiError | undefined;
  body: { choices?: unknown } | undefined;
  open(unit: string, data: string) {
    this.seen.push(`open ${unit} ${data}`);
  }
  chunk(data: string) {
    this.seen.push(`chunk ${data}`);
  }
  end(unit: string) {
    this.seen.push(`end ${unit}`);
  }
  result(body: Record<string, unknown>, unit: string) {
    this.body = body;
    this.seen.push(`result ${unit} ${JSON.stringify(body.usage)}`);
  }
  fail(err: ApiError) {
    this.error = err;
    this.seen.push(`fail ${err.code}`);
  }
}

class FakeCredits implements JobCredits {
  log: string[] = [];
  refuse = false;
  failCharge = false;
  async hold() {
    if (this.refuse) throw new ApiError("insufficient_credits", "too little");
    this.log.push("hold");
  }
  parts: PaidPart[] = [];
  async charge(usage: Usage, parts: readonly PaidPart[]) {
    if (this.failCharge) {
      await this.release();
      throw new Error("charge failed");
    }
    this.parts = [...parts];
    const who = parts.map((p) => p.payees.members.map((m) => m.node).join(",")).join(" then ");
    this.log.push(`charge ${usage.completion_tokens} to ${who} for ${parts[0]?.modelSha256?.slice(0, 1)}`);
  }
  async release() {
    this.log.push("release");
  }
}

function setup(
  o: {
    stream?: boolean;
    units?: FakeUnit[];
    paid?: boolean;
    failFinish?: boolean;
    resumable?: boolean;
    spare?: boolean;
    stallMs?: number;
    /** jobs with no unit free wait their turn (the test serves them); else the wait runs out at once */
    waits?: boolean;
  } = {},
) {
  const units = o.units ?? [new FakeUnit("n1"), new FakeUnit("n2"), new FakeUnit("n3"), new FakeUnit("n4")];
  const credits = new FakeCredits();
  const rows: string[] = [];
  const out = new FakeResponse();
  /** the jobs waiting their turn for a unit: `serve` gives each one a unit can take now */
  const waiting = new Set<{ take: () => boolean; settle: (taken: boolean) => void }>();
  const queue = {
    waiting,
    serve: () => {
      for (const w of waiting) if (w.take()) w.settle(true);
    },
  };
  const job = new Job(
    {
      start: { type: "job.start", jobId: "job_1", kind: "chat", stream: o.stream ?? true, includeUsage: false, request: {} },
      model: "m",
      apiKeyId: "k",
      bounds: { promptTokens: 100, generationLimit: 50 },
      resumable: o.resumable ?? true,
      stallMs: o.stallMs ?? 60_000,
    },
    {
      pick: (_model, tried) => units.find((u) => tried.get(u.id) !== u.incarnation),
      queue: (take, signal) =>
        new Promise((resolve) => {
          if (take()) return resolve(true);
          if (!o.waits) return resolve(false);
          const w = {
            take,
            settle: (taken: boolean) => {
              waiting.delete(w);
              resolve(taken);
            },
          };
          waiting.add(w);
          signal.addEventListener("abort", () => w.settle(false));
        }),
      // none to continue on when there is no spare unit (the wait runs out)
      continuer: (_model, sha256, tried) =>
        o.spare === false ? undefined : units.find((u) => tried.get(u.id) !== u.incarnation && u.models.get("m")?.sha256 === sha256),
      credits: o.paid === false ? undefined : credits,
      records: {
        started: async (j) => void rows.push(`running on ${j.unit?.id}`),
        finished: async (j, status, usage) => {
          if (o.failFinish) throw new Error("database gone");
          rows.push(`${status} on ${j.unit?.id ?? "-"}${usage ? ` ${usage.completion_tokens}` : ""}`);
        },
      },
      log: { warn() {}, error() {} },
    },
    out,
  );
  return { job, units, credits, rows, out, queue };
}

const chunk = (text: string) => JSON.stringify({ choices: [{ delta: { content: text } }] });
/** a continuing unit streams completion events */
const cmpl = (text: string, finish: string | null = null) => JSON.stringify({ choices: [{ text, index: 0, finish_reason: finish }] });
let nextId = 100;
/** a unit streams `text` as one token */
const say = (unit: FakeUnit | undefined, text: string) => unit?.sink?.chunk(chunk(text), [nextId++]);
const usage = (completion: number): Usage => ({ prompt_tokens: 10, completion_tokens: completion, total_tokens: 10 + completion });
const states = (job: Job) => job.history.map((h) => (h.unit ? `${h.state}@${h.unit}` : h.state));

describe("Job", () => {
  it("pays whoever the unit named when the job was dispatched, even if its split changes before the end", async () => {
    const { job, units, credits, out } = setup();
    await job.run();
    say(units[0], "hello");
    (units[0] as FakeUnit).paying = ["someone-else"];
    // the node reports 5 tokens; the coordinator counted 1 in the stream, and believes one end token more
    units[0]?.sink?.end(usage(5));
    await waitFor("the end", () => out.seen.includes("end n1"));
    expect(credits.log).toEqual(["hold", "charge 2 to n1 for a"]);
  });

  it("releases the hold of a whole response whose final row cannot be recorded: the client never gets the body", async () => {
    const { job, units, credits, out } = setup({ stream: false, failFinish: true });
    await job.run();
    say(units[0], "hi");
    units[0]?.sink?.end(usage(1));
    await waitFor("the failure", () => out.error);
    expect(out.seen).toEqual(["fail internal_error"]);
    expect(credits.log).toEqual(["hold", "release"]);
  });

  it("streams to completion: charged for what was relayed, recorded, then the client hears the end", async () => {
    const { job, units, credits, rows, out } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("hello"), [1, 2, 3, 4]);
    units[0]?.sink?.chunk(
      chunk(" you"),
      Array.from({ length: 30 }, (_, i) => 5 + i),
    );
    // the node streams more tokens than the 9 bytes relayed (+16) can have made
    units[0]?.sink?.end(usage(40));
    await waitFor("the end", () => out.seen.includes("end n1"));
    expect(states(job)).toEqual(["queued", "dispatched@n1", "streaming", "completed"]);
    expect(out.seen).toEqual([`open n1 ${chunk("hello")}`, `chunk ${chunk(" you")}`, "end n1"]);
    expect(credits.log).toEqual(["hold", "charge 25 to n1 for a"]);
    expect(rows).toEqual(["running on n1", "completed on n1 25"]);
  });

  it("retries on another unit when one fails before any output, and gives up after MAX_ATTEMPTS", async () => {
    const { job, units, credits, rows, out } = setup({ stream: false });
    await job.run();
    units[0]?.sink?.error({ message: "engine crashed", retryable: true });
    units[1]?.sink?.error({ message: "went away", retryable: true, cause: "node_lost" });
    expect(states(job)).toEqual(["queued", "dispatched@n1", "dispatched@n2", "dispatched@n3"]);
    units[2]?.sink?.error({ message: "engine crashed again", retryable: true });
    await waitFor("the failure", () => out.error !== undefined);
    expect(MAX_ATTEMPTS).toBe(3);
    expect(units[3]?.sink).toBeUndefined();
    expect(states(job).at(-1)).toBe("failed");
    expect(out.error?.code).toBe("node_failed");
    expect(credits.log).toEqual(["hold", "release"]);
    expect(rows.at(-1)).toBe("failed on n3");
  });

  it("completes a whole response on the unit that took over, assembled from what it streamed", async () => {
    const { job, units, credits, out } = setup({ stream: false });
    await job.run();
    units[0]?.sink?.error({ message: "went away", retryable: true });
    say(units[1], "hi");
    units[1]?.sink?.end(usage(1));
    await waitFor("the result", () => out.seen.length > 0);
    expect(out.seen).toEqual([`result n2 ${JSON.stringify(usage(1))}`]);
    expect(credits.log).toEqual(["hold", "charge 1 to n2 for a"]);
  });

  it("continues a stream on another unit with the same model file: one response, each token once, each unit paid for its part", async () => {
    const { job, units, credits, rows, out } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("One"), [7]);
    units[0]?.sink?.chunk(chunk(", two"), [8, 9]);
    units[0]?.sink?.error({ message: "node went away", retryable: true, cause: "node_lost" });
    await waitFor("the continuation", () => units[1]?.sink);
    expect(units[1]?.started?.resume).toEqual({ tokens: [7, 8, 9], text: "" });
    // the rest of the generation limit the credits were held for
    expect(units[1]?.started?.request).toMatchObject({ max_tokens: 47, n_predict: 47 });
    units[1]?.sink?.chunk(cmpl(", three"), [10]);
    units[1]?.sink?.chunk(cmpl("", "stop"), 1);
    // its prompt held the 3 tokens it was given again
    units[1]?.sink?.end({ prompt_tokens: 13, completion_tokens: 2, total_tokens: 15 }, 3);
    await waitFor("the end", () => out.seen.includes("end n2"));
    expect(states(job)).toEqual(["queued", "dispatched@n1", "streaming", "continuing", "continuing@n2", "streaming", "completed"]);
    expect(out.seen.slice(0, 2)).toEqual([`open n1 ${chunk("One")}`, `chunk ${chunk(", two")}`]);
    // the continuing unit's completion events, as the job's chat chunks under one identity
    const continued = out.seen.slice(2, 4).map((c) => JSON.parse(c.slice("chunk ".length)));
    expect(continued).toEqual([
      expect.objectContaining({
        id: "job_1",
        model: "m",
        object: "chat.completion.chunk",
        choices: [{ index: 0, delta: { content: ", three" }, finish_reason: null }],
      }),
      expect.objectContaining({ id: "job_1", choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }),
    ]);
    expect(out.seen.slice(4)).toEqual(["end n2"]);
    // charged once: the prompt once, the 5 tokens once
    expect(credits.log).toEqual(["hold", "charge 5 to n1 then n2 for a"]);
    expect(credits.parts.map((p) => [p.promptTokens, p.completionTokens])).toEqual([
      [10, 3],
      [13, 2],
    ]);
    expect(rows.at(-1)).toBe("completed on n2 5");
  });

  it("continues a whole response too: the client gets one body with all the text", async () => {
    const { job, units, out } = setup({ stream: false });
    await job.run();
    say(units[0], "Hello");
    units[0]?.sink?.error({ message: "engine crashed", retryable: false });
    await waitFor("the continuation", () => units[1]?.sink);
    units[1]?.sink?.chunk(cmpl(" world", "length"), [5]);
    units[1]?.sink?.end({ prompt_tokens: 11, completion_tokens: 1, total_tokens: 12 }, 1);
    await waitFor("the result", () => out.seen.length > 0);
    expect(out.seen).toEqual([`result n2 ${JSON.stringify(usage(2))}`]);
    expect(out.body?.choices).toEqual([
      { index: 0, message: { role: "assistant", content: "Hello world" }, logprobs: null, finish_reason: "length" },
    ]);
  });

  it("continues on the unit that failed once it is another incarnation (its split re-formed), never on the same one", async () => {
    const head = new FakeUnit("head");
    const { job, out } = setup({ units: [head] });
    await job.run();
    say(head, "Once");
    head.incarnation++; // its worker died and it re-planned onto the others
    head.sink?.error({ message: "the engine failed mid-stream", retryable: false });
    await waitFor("the continuation", () => head.started?.resume);
    expect(head.started?.resume?.tokens).toHaveLength(1);
    head.sink?.error({ message: "failed again", retryable: false });
    await waitFor("the failure", () => out.error !== undefined);
    expect(states(job)).toEqual(["queued", "dispatched@head", "streaming", "continuing", "continuing@head", "continuing", "failed"]);
  });

  it("takes a unit that goes silent mid-stream for failed: stopped there, the job continues elsewhere", async () => {
    const { job, units, out } = setup({ stallMs: 100 });
    await job.run();
    say(units[0], "Hello");
    // n1 sends nothing more
    await waitFor("the continuation", () => units[1]?.started?.resume);
    expect(units[0]?.cancelled).toEqual(["job_1"]);
    units[1]?.sink?.chunk(cmpl(" there", "stop"), [9]);
    units[1]?.sink?.end({ prompt_tokens: 11, completion_tokens: 1, total_tokens: 12 }, 1);
    await waitFor("the end", () => out.seen.includes("end n2"));
    expect(states(job)).toEqual(["queued", "dispatched@n1", "streaming", "continuing", "continuing@n2", "streaming", "completed"]);
  });

  it("continues at most MAX_CONTINUATIONS times, however often a unit comes back in a new incarnation", async () => {
    const head = new FakeUnit("head");
    const { job, out, credits } = setup({ units: [head] });
    await job.run();
    say(head, "Once");
    for (let i = 0; i <= MAX_CONTINUATIONS; i++) {
      head.incarnation++;
      head.started = undefined;
      head.sink?.error({ message: "failed again", retryable: false });
      if (i < MAX_CONTINUATIONS) await waitFor("the continuation", () => head.started?.resume);
    }
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("node_failed");
    await waitFor("the release", () => credits.log.includes("release"));
  });

  it("ends the stream with an error event, charging nothing, when no unit can continue it or the request cannot be", async () => {
    for (const o of [{ spare: false }, { resumable: false }]) {
      const { job, units, credits, out } = setup(o);
      await job.run();
      say(units[0], "partial");
      units[0]?.sink?.error({ message: "node went away", retryable: true, cause: "node_lost" });
      await waitFor("the failure", () => out.error !== undefined);
      expect(units[1]?.sink).toBeUndefined();
      expect(out.seen).toEqual([`open n1 ${chunk("partial")}`, "fail node_failed"]);
      await waitFor("the release", () => credits.log.includes("release"));
      expect(credits.log).toEqual(["hold", "release"]);
      expect(states(job).at(-1)).toBe("failed");
    }
  });

  it("fails a request the engine refused (a 4xx) without retrying", async () => {
    const { job, units, credits, out } = setup();
    await job.run();
    units[0]?.sink?.error({ message: "prompt too long", retryable: false, status: 400 });
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("invalid_request");
    expect(credits.log).toEqual(["hold", "release"]);
  });

  it("waits its turn when no unit can take the job, and runs once one can", async () => {
    const { job, units, credits, out, rows, queue } = setup({ units: [], waits: true });
    await job.run();
    expect([job.state, queue.waiting.size]).toEqual(["queued", 1]);
    queue.serve();
    expect(job.state).toBe("queued");
    units.push(new FakeUnit("n1"));
    queue.serve();
    expect([states(job), queue.waiting.size]).toEqual([["queued", "dispatched@n1"], 0]);
    say(units[0], "hi");
    units[0]?.sink?.end(usage(1));
    // done, but not over until its row, its charge and its client's answer are (what a stopping coordinator waits for)
    expect([job.done, job.over]).toEqual([true, false]);
    await waitFor("the end", () => out.seen.includes("end n1"));
    await waitFor("the job over", () => job.over);
    expect(credits.log).toEqual(["hold", "charge 1 to n1 for a"]);
    expect(rows).toEqual(["running on n1", "completed on n1 1"]);
  });

  it("a job that failed before output waits its turn for another unit", async () => {
    const { job, units, out, queue } = setup({ units: [new FakeUnit("n1")], waits: true });
    await job.run();
    units[0]?.sink?.error({ message: "engine crashed", retryable: true });
    expect([job.state, queue.waiting.size]).toEqual(["dispatched", 1]);
    // a late word from the failed unit changes nothing
    units[0]?.sink?.error({ message: "engine crashed", retryable: true });
    expect(queue.waiting.size).toBe(1);
    units.push(new FakeUnit("n2"));
    queue.serve();
    say(units[1], "hi");
    units[1]?.sink?.end(usage(1));
    await waitFor("the end", () => out.seen.includes("end n2"));
    expect(states(job)).toEqual(["queued", "dispatched@n1", "dispatched@n2", "streaming", "completed"]);
  });

  it("a unit handed a waiting job that fails it at once: the job goes on to another unit", async () => {
    const { job, units, out, queue } = setup({ units: [], waits: true });
    await job.run();
    const refusing = new FakeUnit("n1");
    // it refuses the job as it is dispatched (another replica's node with a request too large to send there)
    refusing.dispatch = (_job, sink) => queueMicrotask(() => sink.error({ message: "too large", retryable: true }));
    units.push(refusing, new FakeUnit("n2"));
    queue.serve();
    await waitFor("the job on the other unit", () => units[1]?.sink !== undefined);
    say(units[1], "hi");
    units[1]?.sink?.end(usage(1));
    await waitFor("the end", () => out.seen.includes("end n2"));
    expect(states(job)).toEqual(["queued", "dispatched@n1", "dispatched@n2", "streaming", "completed"]);
  });

  it("a client that leaves while its job waits for a unit: the hold is released, nothing recorded", async () => {
    const { job, credits, rows, queue } = setup({ units: [], waits: true });
    await job.run();
    job.cancel("client disconnected");
    await waitFor("the release", () => credits.log.includes("release"));
    await waitFor("the job over", () => job.over);
    expect([states(job), credits.log, rows, queue.waiting.size]).toEqual([["queued", "cancelled"], ["hold", "release"], [], 0]);
  });

  it("fails with no capacity when no unit can take the job within the wait, releasing the hold", async () => {
    const { job, credits, out, rows } = setup({ units: [] });
    await job.run();
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("no_capacity");
    expect(states(job)).toEqual(["queued", "failed"]);
    expect(credits.log).toEqual(["hold", "release"]);
    expect(rows).toEqual(["failed on -"]);
  });

  it("cancels on the unit when the client goes away mid-stream: the output sent and the prompt the unit told are charged; later frames change nothing", async () => {
    const { job, units, credits, out, rows } = setup();
    await job.run();
    units[0]?.sink?.prompted?.(7);
    say(units[0], "some");
    say(units[0], " more");
    job.cancel("client disconnected");
    units[0]?.sink?.end(usage(3));
    await waitFor("the charge", () => credits.log.length > 1);
    expect(units[0]?.cancelled).toEqual(["job_1"]);
    expect(states(job)).toEqual(["queued", "dispatched@n1", "streaming", "cancelled"]);
    expect(credits.log).toEqual(["hold", "charge 2 to n1 for a"]);
    expect(credits.parts.map((p) => [p.promptTokens, p.completionTokens, p.receiptPromptTokens])).toEqual([[7, 2, 7]]);
    expect(out.seen).toEqual([`open n1 ${chunk("some")}`, `chunk ${chunk(" more")}`]);
    await waitFor("the final row", () => rows.includes("cancelled on n1 2"));

    // a peer site's job: no more output and prompt than the peer charged its client
    for (const [told, charged] of [
      [{ tokens: 1, promptTokens: 0 }, [0, 1]],
      [{ tokens: 2, promptTokens: 5 }, [5, 2]],
      [{ tokens: 9, promptTokens: 99 }, [7, 3]],
    ] as const) {
      const peer = setup();
      await peer.job.run();
      peer.units[0]?.sink?.prompted?.(7);
      say(peer.units[0], "a");
      say(peer.units[0], "b");
      say(peer.units[0], "c");
      peer.job.cancel("the origin site's client went away", told);
      await waitFor("the charge", () => peer.credits.log.length > 1);
      expect(peer.credits.parts.map((p) => [p.promptTokens, p.completionTokens])).toEqual([charged]);
    }
  });

  it("releases the hold of a job cancelled before any output, and of a whole response cancelled mid-way", async () => {
    for (const stream of [true, false]) {
      const { job, units, credits } = setup({ stream });
      await job.run();
      if (!stream) say(units[0], "unseen");
      job.cancel("client disconnected");
      await waitFor("the release", () => credits.log.includes("release"));
      expect(credits.log).toEqual(["hold", "release"]);
    }
  });

  it("releases a hold that was being made when the client went away, and dispatches nothing", async () => {
    const { job, units, credits } = setup();
    const running = job.run();
    job.cancel("client disconnected");
    await running;
    expect(credits.log).toEqual(["hold", "release"]);
    expect(units[0]?.sink).toBeUndefined();
    expect(states(job)).toEqual(["queued", "cancelled"]);
  });

  it("holds nothing and runs nothing when the credits do not cover the worst case", async () => {
    const { job, units, credits, rows } = setup();
    credits.refuse = true;
    await expect(job.run()).rejects.toMatchObject({ code: "insufficient_credits" });
    expect(states(job)).toEqual(["queued", "failed"]);
    expect(units[0]?.sink).toBeUndefined();
    expect(rows).toEqual([]);
  });

  it("releases the hold when the charge fails, and tells the client the job could not be recorded", async () => {
    const { job, units, credits, out } = setup({ stream: false });
    credits.failCharge = true;
    await job.run();
    say(units[0], "hi");
    units[0]?.sink?.end(usage(1));
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("internal_error");
    expect(credits.log).toEqual(["hold", "release"]);
  });

  it("runs free jobs without credits", async () => {
    const { job, units, out } = setup({ paid: false });
    await job.run();
    units[0]?.sink?.end(usage(0));
    await waitFor("the end", () => out.seen.includes("end n1"));
  });
});
