import { randomBytes } from "node:crypto";
import { validate } from "@readme/openapi-parser";
import { type TestDatabase, testDatabase, waitFor } from "@sharedllm/testkit";
import { launchBrowser } from "@sharedllm/testkit/browser";
import { SimNode } from "@sharedllm/testkit/simNode";
import { Ajv2020 } from "ajv/dist/2020.js";
import Fastify, { type FastifyInstance } from "fastify";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApiKey } from "../apiKeys.js";
import { type Coordinator, startCoordinator } from "../coordinator.js";
import { errorsPlugin } from "../errors.js";
import { federationPlugin } from "../federation/plugin.js";
import { ROUTE_DOCS, undocumentedReason } from "../routeDocs.js";
import { accountsPlugin } from "./accounts.js";
import { auditsPlugin } from "./audits.js";
import { historyPlugin } from "./history.js";
import { OPENAPI_PATH, openapiPlugin } from "./openapi.js";

interface Spec {
  openapi: string;
  paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: object }> }> }>>;
}

const joinToken = randomBytes(32).toString("base64url");
let c: Coordinator;
let database: TestDatabase;
let apiKey: string;
let spec: Spec;
let sim: SimNode | undefined;

beforeAll(async () => {
  database = await testDatabase();
  c = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...database,
    joinToken,
    logger: pino({ level: "silent" }),
  });
  apiKey = (await createApiKey(c.db, "t")).secret;
  spec = (await (await fetch(`${c.url}${OPENAPI_PATH}`)).json()) as Spec;
});
afterAll(async () => {
  sim?.stop();
  await c?.close();
  await database?.cleanup();
});

/** `GET /v1/models/:model` -> the spec's `/v1/models/{model}` operation, if it has one */
function operation(s: Spec, route: string) {
  const [method, url] = route.split(" ") as [string, string];
  return s.paths[url.replace(/:(\w+)/g, "{$1}")]?.[method.toLowerCase()];
}

/** The routes of an app that should be in its spec and are not. */
function missing(app: FastifyInstance, s: Spec): string[] {
  return app.apiRoutes.filter((r) => !undocumentedReason(...(r.split(" ") as [string, string])) && !operation(s, r));
}

/** Checks a real response against the schema the spec declares for it (status, content type). */
function conforms(route: string, status: number, body: unknown, contentType = "application/json") {
  const schema = operation(spec, route)?.responses[String(status)]?.content?.[contentType]?.schema;
  expect(schema, `${route} declares no ${status} ${contentType} response`).toBeDefined();
  const check = new Ajv2020({ strict: false }).compile(schema as object);
  expect(check(body), JSON.stringify(check.errors)).toBe(true);
}

describe("the OpenAPI spec", () => {
  it("is valid OpenAPI 3.1", async () => {
    expect(spec.openapi).toBe("3.1.0");
    expect((spec as unknown as { info: { description: string } }).info.description).toContain("`GET /v1/control`: the nodes' WebSocket");
    const result = await validate(structuredClone(spec) as never);
    expect(result.valid ? [] : result.errors).toEqual([]);
  });

  it("documents every route the coordinator registered, save those left out with a reason", () => {
    expect(c.app.apiRoutes).toContain("POST /v1/chat/completions");
    expect(missing(c.app, spec)).toEqual([]);
    for (const r of c.app.apiRoutes.filter((r) => undocumentedReason(...(r.split(" ") as [string, string])))) {
      expect(operation(spec, r), `${r} is left out on purpose`).toBeUndefined();
    }
  });

  it("documents the routes of the ledger, audits, federation and history plugins too", async () => {
    const app = Fastify();
    await app.register(errorsPlugin);
    await app.register(openapiPlugin, { version: "test" });
    // the routes are what is enumerated here: the plugins' dependencies are never called
    await app.register(accountsPlugin, { signInsPerMinute: 1 } as never);
    await app.register(auditsPlugin, {} as never);
    await app.register(federationPlugin, {} as never);
    await app.register(historyPlugin, {} as never);
    const s = (await app.inject(OPENAPI_PATH).then((r) => r.json())) as Spec;
    expect(app.apiRoutes).toEqual(
      expect.arrayContaining([
        "GET /v1/ledger",
        "POST /v1/keys",
        "GET /v1/audits",
        "GET /v1/federation",
        "GET /v1/history/:address/escrow",
      ]),
    );
    expect(missing(app, s)).toEqual([]);
    expect(operation(s, "POST /federation/v1/ping")).toBeUndefined();
    // nothing documented that no plugin registers (a renamed route would leave a stale entry)
    expect(Object.keys(ROUTE_DOCS).filter((r) => !c.app.apiRoutes.includes(r) && !app.apiRoutes.includes(r))).toEqual([]);
    await app.close();
  });

  it("declares the bearer scheme and the streaming response", () => {
    const chat = operation(spec, "POST /v1/chat/completions") as unknown as {
      security: unknown;
      requestBody: { content: Record<string, unknown> };
      responses: Record<string, { content: Record<string, unknown> }>;
    };
    expect(chat.security).toEqual([{ bearer: [] }]);
    expect(chat.requestBody.content["application/json"]).toBeDefined();
    expect(Object.keys(chat.responses["200"]?.content ?? {})).toEqual(["application/json", "text/event-stream"]);
    expect(Object.keys(chat.responses)).toEqual(expect.arrayContaining(["400", "401", "402", "404", "503"]));
  });
});

describe("real responses match the spec", () => {
  const get = (path: string, key?: string) => fetch(`${c.url}${path}`, { headers: key ? { authorization: `Bearer ${key}` } : {} });

  it("GET /healthz", async () => {
    const res = await get("/healthz");
    conforms("GET /healthz", res.status, await res.json());
  });

  it("GET /v1/models and its errors", async () => {
    const list = await get("/v1/models", apiKey);
    expect(list.status).toBe(200);
    conforms("GET /v1/models", 200, await list.json());
    const anonymous = await get("/v1/models");
    expect(anonymous.status).toBe(401);
    conforms("GET /v1/models", 401, await anonymous.json());
    const unknown = await get("/v1/models/no-such-model", apiKey);
    expect(unknown.status).toBe(404);
    conforms("GET /v1/models/:model", 404, await unknown.json());
  });

  it("a request the handler refuses keeps its OpenAI-shaped error, as declared", async () => {
    const res = await fetch(`${c.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "m", messages: [] }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string; param: string } };
    expect(body.error).toMatchObject({ code: "invalid_request", type: "invalid_request_error", param: "messages" });
    conforms("POST /v1/chat/completions", 400, body);
  });

  it("a body that is not a JSON object is refused before the handler, as before", async () => {
    for (const body of ["[1]", "null", "3"]) {
      const res = await fetch(`${c.url}/v1/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body,
      });
      expect(res.status, body).toBe(400);
      const json = await res.json();
      expect(json, body).toEqual({
        error: { message: "the request body must be a JSON object", type: "invalid_request_error", code: "invalid_request", param: null },
      });
      conforms("POST /v1/completions", 400, json);
    }
  });

  it("an unsigned node registration is refused as declared", async () => {
    const res = await fetch(`${c.url}/v1/nodes/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ nodeId: `0x${"1".repeat(40)}`, proof: "0x00" }),
    });
    expect(res.status).toBe(401);
    conforms("POST /v1/nodes/register", 401, await res.json());
  });
});

describe("a real completion matches the spec", () => {
  const chat = (stream: boolean) =>
    fetch(`${c.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "sim-model", messages: [{ role: "user", content: "hi" }], max_tokens: 4, stream }),
    });

  it("as JSON, and streamed as text/event-stream", async () => {
    sim = new SimNode({ coordinatorUrl: c.url, joinToken });
    await sim.start();
    await waitFor("the node's model", async () => (await (await fetch(`${c.url}/healthz`)).json()).models.includes("sim-model"));
    const whole = await chat(false);
    expect(whole.status).toBe(200);
    conforms("POST /v1/chat/completions", 200, await whole.json());
    const streamed = await chat(true);
    expect(streamed.status).toBe(200);
    expect(streamed.headers.get("content-type")).toContain("text/event-stream");
    const declared = operation(spec, "POST /v1/chat/completions")?.responses["200"]?.content ?? {};
    expect(Object.keys(declared)).toContain("text/event-stream");
    const events = (await streamed.text())
      .split("\n\n")
      .filter((e) => e.trim())
      .map((e) => ({ data: e.replace(/^data: /, "") }));
    expect(events.at(-1)).toEqual({ data: "[DONE]" });
    // the declared schema is each event's (schemathesis found a string declared for the stream)
    for (const event of events) conforms("POST /v1/chat/completions", 200, event, "text/event-stream");
  });
});

describe("the interactive docs", () => {
  it("serve Swagger UI with its assets from the coordinator", async () => {
    const page = await fetch(`${c.url}/docs`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("Swagger UI");
    const assets = [...html.matchAll(/(?:href|src)="([^"]+\.(?:css|js))"/g)].map((m) => new URL(m[1] as string, page.url).href);
    expect(assets.length).toBeGreaterThan(0);
    for (const a of assets) {
      expect(a.startsWith(c.url), `${a} is served by the coordinator`).toBe(true);
      const res = await fetch(a);
      expect(res.status, a).toBe(200);
      expect((await res.arrayBuffer()).byteLength, a).toBeGreaterThan(0);
    }
  });

  it("render every operation in Chromium, asking nothing of any other origin", async () => {
    const browser = await launchBrowser();
    try {
      const page = await browser.newPage();
      const elsewhere: string[] = [];
      page.on("request", (r) => {
        if (!r.url().startsWith(c.url)) elsewhere.push(r.url());
      });
      await page.goto(`${c.url}/docs`);
      const operations = Object.values(spec.paths).flatMap((p) => Object.keys(p)).length;
      await page.waitForFunction((n) => document.querySelectorAll(".opblock").length === n, operations, { timeout: 20_000 });
      expect(await page.locator(".opblock-summary-path", { hasText: "/v1/chat/completions" }).count()).toBe(1);
      expect(elsewhere).toEqual([]);
    } finally {
      await browser.close();
    }
  });
});
