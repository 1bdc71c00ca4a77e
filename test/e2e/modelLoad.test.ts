/**
 * A model in demand that no node serves: the coordinator asks an idle node with
 * room to pull it from the source the operator pinned (here over real HTTP from a
 * local stand-in for the Hugging Face hub) and load it on a second llama-server;
 * the waiting request is then served. A node cannot change where models come from.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { DEFAULT_MODEL, ModelStore, resolvePaths } from "@sharedllm/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "../helpers.ts";
import { SimNode } from "../simNode.ts";
import { type System, startSystem } from "../system.ts";

const COPY = "smollm2-copy";
let hub: Server;
let sys: System;
const store = new ModelStore(resolvePaths().cache);

beforeAll(async () => {
  const file = await store.path(DEFAULT_MODEL.id);
  const size = (await stat(file)).size;
  hub = createServer((req, res) => {
    if (req.url !== "/test/smol/resolve/main/smollm2-copy.gguf") return void res.writeHead(404).end();
    res.writeHead(200, { "content-length": size, "x-linked-etag": `"${DEFAULT_MODEL.sha256}"` });
    createReadStream(file).pipe(res);
  });
  await new Promise<void>((r) => hub.listen(0, "127.0.0.1", r));
  process.env.SHAREDLLM_HF_ENDPOINT = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`;
  await store.rm(COPY).catch(() => {});
  sys = await startSystem({
    models: [
      { id: COPY, source: "hf:test/smol/smollm2-copy.gguf", sha256: DEFAULT_MODEL.sha256, sizeBytes: DEFAULT_MODEL.size },
      { id: "huge", source: "hf:test/huge/huge.gguf", sha256: "2".repeat(64), sizeBytes: 10 ** 15 },
    ],
  });
});

afterAll(async () => {
  await sys?.close();
  delete process.env.SHAREDLLM_HF_ENDPOINT;
  await new Promise((r) => hub?.close(r));
  await store.rm(COPY).catch(() => {});
});

describe("loading a model on demand", () => {
  it("an idle node with room pulls and loads a model in demand, and the waiting request is served", async () => {
    // a node that claims the pinned id for another file, from a source of its choosing, and then leaves
    const liar = new SimNode({
      coordinatorUrl: sys.coordinator.url,
      joinToken: sys.joinToken,
      served: [{ id: COPY, sha256: "6".repeat(64), contextSize: 2048, sizeBytes: 1, source: "/etc/passwd" }],
    });
    await liar.start();
    expect(sys.coordinator.fleet.get(liar.id)?.models.has(COPY)).toBe(false);
    liar.stop();
    await waitFor("the lying node to leave", () => sys.coordinator.fleet.size === 1);
    // the real node's free memory is known once it has sent a heartbeat
    await waitFor("a heartbeat from the real node", () => sys.coordinator.fleet.get(sys.node.nodeId)?.heartbeat, 15_000);

    const r = await sys.client.chat.completions.create({ model: COPY, messages: [{ role: "user", content: "Hi!" }], max_tokens: 8 });
    expect(r.model).toBe(COPY);
    expect(r.choices[0]?.message.content?.length).toBeGreaterThan(0);
    expect(sys.node.models().sort()).toEqual([COPY, DEFAULT_MODEL.id].sort());
    expect((await store.get(COPY))?.sha256).toBe(DEFAULT_MODEL.sha256);
    const models = await sys.client.models.list();
    expect(models.data.map((m) => m.id).sort()).toEqual([COPY, DEFAULT_MODEL.id].sort());
  }, 120_000);

  it("a model that no node has room for gets 503 at once", async () => {
    const res = await sys.post("/v1/chat/completions", { model: "huge", messages: [{ role: "user", content: "Hi!" }], max_tokens: 4 });
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/none has room to load it/);
  });

  it("a model a node announced with a source of its own is never loaded on demand", async () => {
    const teacher = new SimNode({
      coordinatorUrl: sys.coordinator.url,
      joinToken: sys.joinToken,
      served: [{ id: "taught", sha256: "3".repeat(64), contextSize: 2048, sizeBytes: 1, source: "hf:evil/evil/evil.gguf" }],
    });
    await teacher.start();
    teacher.stop();
    await waitFor("the teaching node to leave", () => sys.coordinator.fleet.size === 1);
    const loads = sys.node.models().length;
    const res = await sys.post("/v1/chat/completions", { model: "taught", messages: [{ role: "user", content: "Hi!" }], max_tokens: 4 });
    expect(res.status).toBe(503);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/not a model this coordinator loads on demand/);
    expect(sys.node.models()).toHaveLength(loads);
  });
});
