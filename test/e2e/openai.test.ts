/**
 * The OpenAI-compatible API end to end on the real engine: the official openai
 * client against the coordinator, a real node daemon and llama-server on the
 * default model.
 */
import { Agent, request } from "node:http";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../helpers.ts";
import { schemaErrors } from "../openai/schema.ts";
import { MODEL, type System, startSystem } from "../system.ts";

let sys: System;
beforeAll(async () => {
  // a request with no node to run on is refused after a short wait (its node might be coming back)
  sys = await startSystem({ queueWaitMs: 1_000 });
});
afterAll(async () => {
  await sys?.close();
});

const messages = [{ role: "user" as const, content: "Name three colours." }];

describe("official openai client", () => {
  it("lists the served model", async () => {
    const models = await sys.client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    expect((await sys.client.models.retrieve(MODEL)).id).toBe(MODEL);
  });

  it("does a non-streaming chat completion with usage", async () => {
    const r = await sys.client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0 });
    expect(r.object).toBe("chat.completion");
    expect(r.model).toBe(MODEL);
    expect(r.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(r.usage?.completion_tokens).toBeGreaterThan(0);
    expect(r.usage?.completion_tokens).toBeLessThanOrEqual(16);
    expect(r.usage?.prompt_tokens).toBeGreaterThan(0);
  });

  it("streams a chat completion, with the usage chunk only when asked", async () => {
    const collect = async (includeUsage: boolean) => {
      const stream = await sys.client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 12,
        temperature: 0,
        stream: true,
        ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
      });
      let text = "";
      const usages = [];
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        text += chunk.choices[0]?.delta?.content ?? "";
        if (chunk.usage) usages.push(chunk.usage);
      }
      return { text, usages, chunks };
    };
    const plain = await collect(false);
    expect(plain.chunks).toBeGreaterThan(3);
    expect(plain.text.length).toBeGreaterThan(0);
    expect(plain.usages).toEqual([]);
    const withUsage = await collect(true);
    expect(withUsage.text).toBe(plain.text);
    expect(withUsage.usages).toHaveLength(1);
    expect(withUsage.usages[0]?.completion_tokens).toBe(12);
  });

  it("does completions, streaming and not", async () => {
    const r = await sys.client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
    expect(r.choices[0]?.text.length).toBeGreaterThan(0);
    expect(r.usage?.completion_tokens).toBe(8);
    const stream = await sys.client.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 8,
      temperature: 0,
      stream: true,
    });
    let text = "";
    for await (const c of stream) text += c.choices[0]?.text ?? "";
    expect(text).toBe(r.choices[0]?.text);
  });
});

describe("OpenAI's official schema", () => {
  /** The JSON events of an SSE body, without the closing [DONE]. */
  const events = async (res: Response) =>
    (await res.text())
      .split("\n\n")
      .filter((e) => e.startsWith("data: {"))
      .map((e) => JSON.parse(e.slice("data: ".length)) as unknown);

  it("every response the coordinator sends conforms: models, chat and completions, whole and streamed", async () => {
    const get = async (path: string) =>
      (await fetch(sys.coordinator.url + path, { headers: { authorization: `Bearer ${sys.apiKey}` } })).json();
    expect(schemaErrors("ListModelsResponse", await get("/v1/models"))).toEqual([]);
    expect(schemaErrors("Model", await get(`/v1/models/${MODEL}`))).toEqual([]);

    const chat = { model: MODEL, messages, max_tokens: 8 };
    expect(schemaErrors("CreateChatCompletionResponse", await (await sys.post("/v1/chat/completions", chat)).json())).toEqual([]);
    const chunks = await events(await sys.post("/v1/chat/completions", { ...chat, stream: true, stream_options: { include_usage: true } }));
    expect(chunks.length).toBeGreaterThan(3);
    for (const chunk of chunks) expect(schemaErrors("CreateChatCompletionStreamResponse", chunk), JSON.stringify(chunk)).toEqual([]);

    // streamed completions have no schema of their own (OpenAI's own chunks would fail the
    // whole response's, whose finish_reason may not be null)
    const completion = { model: MODEL, prompt: "Once upon a time", max_tokens: 8 };
    expect(schemaErrors("CreateCompletionResponse", await (await sys.post("/v1/completions", completion)).json())).toEqual([]);
  });
});

describe("HTTP framing", () => {
  it("streams back to back over one kept-alive connection, each a whole SSE body ending in [DONE]", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const stream = (max_tokens: number) =>
      new Promise<{ reused: boolean; events: string[] }>((resolve, reject) => {
        const body = JSON.stringify({ model: MODEL, messages, max_tokens, temperature: 0, stream: true });
        const req = request(`${sys.coordinator.url}/v1/chat/completions`, {
          method: "POST",
          agent,
          headers: { authorization: `Bearer ${sys.apiKey}`, "content-type": "application/json" },
        });
        req.once("error", reject);
        req.once("response", (res) => {
          expect(res.headers["transfer-encoding"]).toBe("chunked");
          let text = "";
          res.setEncoding("utf8").on("data", (t: string) => {
            text += t;
          });
          res.once("end", () => resolve({ reused: req.reusedSocket, events: text.split("\n\n").filter(Boolean) }));
        });
        req.end(body);
      });
    try {
      for (const [i, tokens] of [6, 9, 3].entries()) {
        const { reused, events } = await stream(tokens);
        expect(reused).toBe(i > 0);
        expect(events.at(-1)).toBe("data: [DONE]");
        const deltas = events.slice(0, -1).map((e) => JSON.parse(e.replace(/^data: /, "")) as { choices: unknown[] });
        expect(deltas.length).toBeGreaterThanOrEqual(tokens);
      }
    } finally {
      agent.destroy();
    }
  });
});

describe("the network view", () => {
  it("shows the real node online with its capabilities and measured speed", async () => {
    const net = (await (await fetch(`${sys.coordinator.url}/v1/network`)).json()) as {
      nodes: {
        id: string;
        status: string;
        models: string[];
        capabilities: { cores: number; tokensPerSecond: number; engineVariant: string };
      }[];
    };
    const me = net.nodes.find((n) => n.id === sys.node.nodeId);
    expect(me).toMatchObject({ status: "online", models: [MODEL] });
    expect(me?.capabilities.cores).toBeGreaterThan(0);
    expect(me?.capabilities.engineVariant).toBe(sys.node.engine.variant);
    expect(me?.capabilities.tokensPerSecond).toBeGreaterThan(1);
  });
});

describe("same text as llama-server itself", () => {
  it("at temperature 0, chat and completions through the coordinator equal llama-server's direct answers", async () => {
    const direct = new OpenAI({ baseURL: `${sys.node.llama.url}/v1`, apiKey: sys.node.llama.apiKey, maxRetries: 0 });
    const prompts = ["Write a haiku about rivers.", "What is 2 + 2?", "List the planets."];
    for (const content of prompts) {
      const req = { model: MODEL, messages: [{ role: "user" as const, content }], max_tokens: 40, temperature: 0, seed: 42 };
      const [viaCoordinator, viaEngine] = [await sys.client.chat.completions.create(req), await direct.chat.completions.create(req)];
      expect(viaCoordinator.choices[0]?.message.content).toBe(viaEngine.choices[0]?.message.content);
      expect(viaCoordinator.usage?.completion_tokens).toBe(viaEngine.usage?.completion_tokens);
    }
    const creq = { model: MODEL, prompt: "The capital of France is", max_tokens: 20, temperature: 0 };
    const [a, b] = [await sys.client.completions.create(creq), await direct.completions.create(creq)];
    expect(a.choices[0]?.text).toBe(b.choices[0]?.text);
  });
});

describe("bad input gets OpenAI-shaped errors", () => {
  const good = { model: MODEL, messages, max_tokens: 4 };
  it.each([
    ["malformed JSON", "{not json", 400, "invalid_json"],
    ["a JSON array", "[1,2]", 400, "invalid_request"],
    ["missing messages", { model: MODEL }, 400, "invalid_request"],
    ["wrong types", { model: MODEL, messages: "hello" }, 400, "invalid_request"],
    ["negative max_tokens", { ...good, max_tokens: -5 }, 400, "invalid_request"],
    ["absurd max_tokens", { ...good, max_tokens: 10_000_000 }, 400, "invalid_request"],
    ["unknown model", { ...good, model: "gpt-9" }, 404, "model_not_found"],
  ])("%s -> %i %s", async (_name, body, status, code) => {
    const res = await sys.post("/v1/chat/completions", body);
    expect(res.status).toBe(status);
    const json = (await res.json()) as { error: { message: string; type: string; code: string } };
    expect(json.error.code).toBe(code);
    expect(json.error.type).toMatch(/_error$/);
    expect(json.error.message.length).toBeGreaterThan(5);
  });

  it("no key and a wrong key -> 401", async () => {
    const cases: Record<string, string>[] = [{}, { authorization: "Bearer sk-wrong" }, { authorization: "Basic abc" }];
    for (const headers of cases) {
      const res = await sys.post("/v1/chat/completions", good, headers);
      expect(res.status).toBe(401);
      expect(((await res.json()) as { error: { type: string } }).error.type).toBe("authentication_error");
    }
    await expect(
      new OpenAI({ baseURL: `${sys.coordinator.url}/v1`, apiKey: "sk-nope", maxRetries: 0 }).models.list(),
    ).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it("a prompt longer than the node's context is the client's fault -> 400", async () => {
    const res = await sys.post("/v1/completions", { model: MODEL, prompt: "word ".repeat(5000), max_tokens: 4 });
    expect(res.status).toBe(400);
  });

  it("unknown routes -> 404 in the same shape", async () => {
    const res = await fetch(`${sys.coordinator.url}/v1/nothing`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("not_found");
  });
});

describe("failures", () => {
  it("a client that disconnects mid-stream stops the generation on the node", async () => {
    const ctl = new AbortController();
    const res = await fetch(`${sys.coordinator.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${sys.apiKey}` },
      body: JSON.stringify({ model: MODEL, messages, max_tokens: 2000, ignore_eos: true, stream: true }),
      signal: ctl.signal,
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    // the engine is generating for this request now
    const busy = async () =>
      (
        (await (await fetch(`${sys.node.llama.url}/slots`, { headers: { authorization: `Bearer ${sys.node.llama.apiKey}` } })).json()) as {
          is_processing: boolean;
        }[]
      ).some((s) => s.is_processing);
    expect(await busy()).toBe(true);
    ctl.abort();
    await waitFor("llama-server to stop generating", async () => !(await busy()), 5_000);
    const job = await waitFor("the job to be recorded as cancelled", () =>
      sys.coordinator.db.selectFrom("jobs").selectAll().where("status", "=", "cancelled").executeTakeFirst(),
    );
    expect(job.error).toBe("client disconnected");
  });

  it("killing llama-server mid-stream gives the client an error, never a hang; the next request succeeds", async () => {
    const stream = await sys.client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 2000,
      stream: true,
      ignore_eos: true,
    } as never);
    const started = Date.now();
    let chunks = 0;
    const consume = (async () => {
      for await (const _ of stream as unknown as AsyncIterable<unknown>) {
        if (++chunks === 3) process.kill(sys.node.llama.supervisor.pid as number, "SIGKILL");
      }
    })();
    await expect(consume).rejects.toThrow(/failed|engine/i);
    expect(Date.now() - started).toBeLessThan(10_000);
    const restarts = sys.node.llama.supervisor.restarts;
    // sent at once: the node holds it until its restarted llama-server is ready
    const r = await sys.client.chat.completions.create({ model: MODEL, messages, max_tokens: 8 });
    expect(r.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(sys.node.llama.supervisor.restarts).toBeGreaterThanOrEqual(restarts);
    expect(sys.node.llama.supervisor.restarts).toBeGreaterThan(0);
    const failed = await sys.coordinator.db.selectFrom("jobs").select("error").where("status", "=", "failed").execute();
    expect(failed.length).toBeGreaterThan(0);
  });

  it("a request sent right after llama-server died, before anyone noticed, waits for the restart and succeeds", async () => {
    const restarts = sys.node.llama.supervisor.restarts;
    process.kill(sys.node.llama.supervisor.pid as number, "SIGKILL");
    const r = await sys.client.chat.completions.create({ model: MODEL, messages, max_tokens: 8 });
    expect(r.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(sys.node.llama.supervisor.restarts).toBe(restarts + 1);
  });

  it("with no node connected, requests for a known model get 503 no_capacity", async () => {
    await sys.node.control.close();
    await waitFor("the node to leave the fleet", () => sys.coordinator.fleet.size === 0);
    const res = await sys.post("/v1/chat/completions", { model: MODEL, messages, max_tokens: 4 });
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("no_capacity");
  });
});
