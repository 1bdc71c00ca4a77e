/** Jobs waiting their turn for a unit of a real Fleet: first come first served, one place for one job, bounded. */
import type { JobStart } from "@sharedllm/protocol";
import { waitFor } from "@sharedllm/testkit";
import { describe, expect, it } from "vitest";
import { Fleet } from "../fleet.js";
import { ConnectedNode } from "../units.js";
import { Queue } from "./queue.js";

const model = { id: "m", sha256: "a".repeat(64), contextSize: 4096 };
const sink = { chunk() {}, end() {}, error() {} };
const start = (jobId: string): JobStart => ({ type: "job.start", jobId, kind: "chat", stream: true, includeUsage: false, request: {} });

function node(id: string, accepting: boolean): ConnectedNode {
  return new ConnectedNode({
    id,
    models: new Map([["m", model]]),
    slots: 1,
    accepting,
    engine: "e",
    role: "solo",
    send: () => {},
    disconnect: () => {},
  });
}

/** a job of the test: it takes the unit the fleet picks, as Job.take does */
function job(fleet: Fleet, id: string, ran: string[]) {
  return () => {
    const unit = fleet.pick("m");
    if (!unit) return false;
    unit.dispatch(start(id), sink);
    ran.push(`${id}@${unit.id}`);
    return true;
  };
}

describe("Queue", () => {
  it("gives a node that starts taking jobs to the waiting jobs in arrival order, each place to one job", async () => {
    const fleet = new Fleet();
    const paused = node("a", false);
    fleet.add(paused);
    const queue = new Queue(fleet);
    const ran: string[] = [];
    const never = new AbortController().signal;
    const waits = ["j1", "j2", "j3"].map((id) => queue.wait("m", job(fleet, id, ran), { until: Date.now() + 60_000, signal: never }));
    expect([ran, queue.size]).toEqual([[], 3]);
    // the node takes jobs again: it has room for 8 a slot, and every waiting job gets it, first come first
    paused.setAvailability(true, "resumed");
    fleet.notify();
    expect(await Promise.all(waits)).toEqual([true, true, true]);
    expect([ran, queue.size]).toEqual([["j1@a", "j2@a", "j3@a"], 0]);
  });

  it("gives a freed place to a job continuing mid-stream before the new jobs that waited longer", async () => {
    const fleet = new Fleet();
    const busy = node("a", true);
    fleet.add(busy);
    const ran: string[] = [];
    for (let i = 0; i < 8; i++) job(fleet, `full${i}`, ran)();
    const queue = new Queue(fleet, undefined, 1);
    const never = new AbortController().signal;
    const fresh = queue.wait("m", job(fleet, "fresh", ran), { until: Date.now() + 60_000, signal: never });
    // the queue is full for new jobs, never for one whose client is reading its output
    const continuing = queue.wait("m", job(fleet, "continuing", ran), { until: Date.now() + 60_000, signal: never, first: true });
    busy.end("full0", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(await continuing).toBe(true);
    expect([ran.at(-1), queue.size]).toEqual(["continuing@a", 1]);
    busy.end("full1", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(await fresh).toBe(true);
  });

  it("serves a waiting job as soon as a node's job ends and frees a place", async () => {
    const fleet = new Fleet();
    const busy = node("a", true);
    fleet.add(busy);
    const ran: string[] = [];
    for (let i = 0; i < 8; i++) job(fleet, `full${i}`, ran)();
    expect(fleet.pick("m")).toBeUndefined();
    const queue = new Queue(fleet);
    const waited = queue.wait("m", job(fleet, "late", ran), { until: Date.now() + 60_000, signal: new AbortController().signal });
    busy.end("full0", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(await waited).toBe(true);
    expect(ran.at(-1)).toBe("late@a");
  });

  it("takes a freed place at once only with no job waiting before it for the model", async () => {
    const fleet = new Fleet();
    const busy = node("a", true);
    fleet.add(busy);
    const ran: string[] = [];
    for (let i = 0; i < 8; i++) job(fleet, `full${i}`, ran)();
    const queue = new Queue(fleet);
    const never = new AbortController().signal;
    const older = queue.wait("m", job(fleet, "older", ran), { until: Date.now() + 60_000, signal: never });
    // a place frees; before the queue has been told, a new job comes: it waits behind the older one
    busy.end("full0", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    const newer = queue.wait("m", job(fleet, "newer", ran), { until: Date.now() + 60_000, signal: never });
    expect(await older).toBe(true);
    expect([ran.at(-1), queue.size]).toEqual(["older@a", 1]);
    busy.end("full1", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
    expect(await newer).toBe(true);
    expect(ran.slice(-2)).toEqual(["older@a", "newer@a"]);
  });

  it("does not wait when the job is hopeless", async () => {
    const fleet = new Fleet();
    fleet.add(node("a", false));
    const queue = new Queue(fleet);
    const waited = queue.wait("m", () => false, { until: Date.now() + 60_000, signal: new AbortController().signal, hopeless: () => true });
    expect([await waited, queue.size]).toEqual([false, 0]);
  });

  it("gives up at the end of its wait, or when the client leaves", async () => {
    const fleet = new Fleet();
    fleet.add(node("a", false));
    const queue = new Queue(fleet);
    const ran: string[] = [];
    expect(await queue.wait("m", job(fleet, "j1", ran), { until: Date.now() + 50, signal: new AbortController().signal })).toBe(false);
    // a request that has used its wait (on earlier attempts) waits no more
    expect(await queue.wait("m", job(fleet, "j2", ran), { until: Date.now() - 1, signal: new AbortController().signal })).toBe(false);
    const leaving = new AbortController();
    const waited = queue.wait("m", job(fleet, "j3", ran), { until: Date.now() + 60_000, signal: leaving.signal });
    leaving.abort();
    expect([await waited, queue.size, ran]).toEqual([false, 0, []]);
  });

  it("refuses a job at once when the queue is full", async () => {
    const fleet = new Fleet();
    fleet.add(node("a", false));
    const queue = new Queue(fleet, undefined, 1);
    const leaving = new AbortController();
    const first = queue.wait("m", () => false, { until: Date.now() + 60_000, signal: leaving.signal });
    expect(await queue.wait("m", () => false, { until: Date.now() + 60_000, signal: new AbortController().signal })).toBe(false);
    leaving.abort();
    await first;
  });

  it("waits for a model whose last node just left to be served again", async () => {
    const fleet = new Fleet();
    fleet.add(node("a", true));
    const queue = new Queue(fleet);
    const never = new AbortController().signal;
    // never served here: nothing to wait for
    expect(await queue.returns("other", Date.now() + 60_000, never)).toBe(false);
    fleet.remove("a", "moving to another replica");
    const back = queue.returns("m", Date.now() + 60_000, never);
    let served: boolean | undefined;
    void back.then((b) => {
      served = b;
    });
    await new Promise((r) => setImmediate(r));
    expect(served).toBeUndefined();
    fleet.add(node("a", true));
    await waitFor("the model to be served again", () => served);
    expect(served).toBe(true);
  });
});
