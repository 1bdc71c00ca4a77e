/** A job's transitions, with fake units, credits, rows and response: retries, cancels, failures, and the hold on each path. */
import { ApiError, type JobStart, type Usage } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { describe, expect, it } from "vitest";
import type { JobSink, Payees, ServingUnit } from "../units.js";
import { Job, type JobCredits, type JobOutput, MAX_ATTEMPTS } from "./job.js";

const SHA = "a".repeat(64);

class FakeUnit implements ServingUnit {
  readonly models = new Map([["m", { id: "m", sha256: SHA, contextSize: 4096 }]]);
  sink: JobSink | undefined;
  cancelled: string[] = [];
  /** who this unit says is paid now (a head's split, which may change) */
  paying: string[] | undefined;
  constructor(readonly id: string) {}
  dispatch(_job: JobStart, sink: JobSink): void {
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
  async charge(usage: Usage, payees: Payees, sha: string | undefined) {
    if (this.failCharge) {
      await this.release();
      throw new Error("charge failed");
    }
    this.log.push(`charge ${usage.completion_tokens} to ${payees.members.map((m) => m.node).join(",")} for ${sha?.slice(0, 1)}`);
  }
  async release() {
    this.log.push("release");
  }
}

function setup(o: { stream?: boolean; units?: FakeUnit[]; paid?: boolean; failFinish?: boolean } = {}) {
  const units = o.units ?? [new FakeUnit("n1"), new FakeUnit("n2"), new FakeUnit("n3"), new FakeUnit("n4")];
  const credits = new FakeCredits();
  const rows: string[] = [];
  const out = new FakeResponse();
  const job = new Job(
    {
      start: { type: "job.start", jobId: "job_1", kind: "chat", stream: o.stream ?? true, includeUsage: false, request: {} },
      model: "m",
      apiKeyId: "k",
      bounds: { promptTokens: 100, generationLimit: 50 },
    },
    {
      pick: (_model, tried) => units.find((u) => !tried.has(u.id)),
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
  return { job, units, credits, rows, out };
}

const chunk = (text: string) => JSON.stringify({ choices: [{ delta: { content: text } }] });
const usage = (completion: number): Usage => ({ prompt_tokens: 10, completion_tokens: completion, total_tokens: 10 + completion });
const states = (job: Job) => job.history.map((h) => (h.unit ? `${h.state}@${h.unit}` : h.state));

describe("Job", () => {
  it("pays whoever the unit named when the job was dispatched, even if its split changes before the end", async () => {
    const { job, units, credits, out } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("hello"));
    (units[0] as FakeUnit).paying = ["someone-else"];
    units[0]?.sink?.end(usage(2));
    await waitFor("the end", () => out.seen.includes("end n1"));
    expect(credits.log).toEqual(["hold", "charge 2 to n1 for a"]);
  });

  it("releases the hold of a whole response whose final row cannot be recorded: the client never gets the body", async () => {
    const { job, units, credits, out } = setup({ stream: false, failFinish: true });
    await job.run();
    units[0]?.sink?.result({ choices: [{ message: { content: "hi" } }], usage: usage(1) });
    await waitFor("the failure", () => out.error);
    expect(out.seen).toEqual(["fail internal_error"]);
    expect(credits.log).toEqual(["hold", "release"]);
  });

  it("streams to completion: charged for what was relayed, recorded, then the client hears the end", async () => {
    const { job, units, credits, rows, out } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("hello"));
    units[0]?.sink?.chunk(chunk(" you"));
    // the node claims more tokens than the 9 bytes relayed (+16) can have made
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
    // malformed usage is the unit's failure too
    units[1]?.sink?.result({ choices: [], usage: { prompt_tokens: -1 } });
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

  it("completes a whole response on the unit that took over", async () => {
    const { job, units, credits, out } = setup({ stream: false });
    await job.run();
    units[0]?.sink?.error({ message: "went away", retryable: true });
    units[1]?.sink?.result({ choices: [{ message: { content: "hi" } }], usage: usage(5) });
    await waitFor("the result", () => out.seen.length > 0);
    expect(out.seen).toEqual([`result n2 ${JSON.stringify(usage(5))}`]);
    expect(credits.log).toEqual(["hold", "charge 5 to n2 for a"]);
  });

  it("does not retry a failure once output reached the client: the stream ends with an error event", async () => {
    const { job, units, credits, out } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("partial"));
    units[0]?.sink?.error({ message: "node went away", retryable: true });
    expect(units[1]?.sink).toBeUndefined();
    expect(out.seen).toEqual([`open n1 ${chunk("partial")}`, "fail node_failed"]);
    await waitFor("the release", () => credits.log.includes("release"));
    expect(credits.log).toEqual(["hold", "release"]);
    expect(states(job).at(-1)).toBe("failed");
  });

  it("fails a request the engine refused (a 4xx) without retrying", async () => {
    const { job, units, credits, out } = setup();
    await job.run();
    units[0]?.sink?.error({ message: "prompt too long", retryable: false, status: 400 });
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("invalid_request");
    expect(credits.log).toEqual(["hold", "release"]);
  });

  it("fails with no capacity when no unit can take the job, releasing the hold", async () => {
    const { job, credits, out, rows } = setup({ units: [] });
    await job.run();
    await waitFor("the failure", () => out.error !== undefined);
    expect(out.error?.code).toBe("no_capacity");
    expect(states(job)).toEqual(["queued", "failed"]);
    expect(credits.log).toEqual(["hold", "release"]);
    expect(rows).toEqual(["failed on -"]);
  });

  it("cancels on the unit when the client goes away, releasing the hold; later frames change nothing", async () => {
    const { job, units, credits, out, rows } = setup();
    await job.run();
    units[0]?.sink?.chunk(chunk("some"));
    job.cancel("client disconnected");
    units[0]?.sink?.end(usage(3));
    await waitFor("the release", () => credits.log.includes("release"));
    expect(units[0]?.cancelled).toEqual(["job_1"]);
    expect(states(job)).toEqual(["queued", "dispatched@n1", "streaming", "cancelled"]);
    expect(credits.log).toEqual(["hold", "release"]);
    expect(out.seen).toEqual([`open n1 ${chunk("some")}`]);
    await waitFor("the final row", () => rows.includes("cancelled on n1"));
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
    units[0]?.sink?.result({ choices: [{ message: { content: "hi" } }], usage: usage(1) });
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
