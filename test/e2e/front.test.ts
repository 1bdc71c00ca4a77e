/**
 * Coordinator replicas behind nginx, as docs/hosting.md sets them up: two `sharedllm coordinator
 * start --nats-url` processes on one PostgreSQL database and one NATS server, Debian's nginx running docs/nginx/sharedllm.conf
 * with TLS, a simulated node on each replica. Through nginx: a stream arrives token by token,
 * requests are spread over the replicas, nodes hold their control channel, the replicas see each
 * client's own address, and a replica that is stopped hands its new requests to the other.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { JobStart, NetworkResponse, NodeFrame } from "@sharedllm/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { tempPaths, testDatabase, waitFor } from "../helpers.ts";
import { startNats, type TestNats } from "../nats.ts";
import { type Front, frontCertificate, httpsFetch, nginxMissing, startNginx } from "../nginx.ts";
import { SimNode, streamWords } from "../simNode.ts";

const run = promisify(execFile);
const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
/** node registrations one address may attempt per minute, on each replica */
const REGISTRATIONS = 4;

if (nginxMissing) console.warn(`front.test.ts skipped: ${nginxMissing}`);
if (!process.env.DATABASE_URL) console.warn("front.test.ts skipped: replicas share a PostgreSQL database (set DATABASE_URL)");

interface Replica {
  child: ChildProcess;
  /** http://127.0.0.1:<port> */
  url: string;
  /** host:port, as nginx's upstreams name it */
  address: string;
  stderr: () => string;
  exited: Promise<number | null>;
  node: SimNode;
}

/** A promise and what settles it. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** A streamed body read as it arrives: up to some text (within a deadline), then to its end. */
function reader(body: AsyncIterable<string>) {
  const chunks = body[Symbol.asyncIterator]();
  let got = "";
  return {
    /** what has arrived once `text` has; fails when it has not within `ms` */
    async until(text: string, ms: number): Promise<string> {
      const deadline = Date.now() + ms;
      while (!got.includes(text)) {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<"late">((r) => {
          timer = setTimeout(() => r("late"), Math.max(deadline - Date.now(), 0));
        });
        const next = await Promise.race([chunks.next(), late]);
        clearTimeout(timer);
        if (next === "late") throw new Error(`"${text}" did not arrive within ${ms} ms; got ${JSON.stringify(got)}`);
        if (next.done) throw new Error(`the stream ended before "${text}"; got ${JSON.stringify(got)}`);
        got += next.value;
      }
      return got;
    },
    /** everything, once the stream has ended */
    async all(): Promise<string> {
      for (let next = await chunks.next(); !next.done; next = await chunks.next()) got += next.value;
      return got;
    },
  };
}

describe.skipIf(Boolean(nginxMissing) || !process.env.DATABASE_URL)(
  "coordinator replicas behind nginx (docs/nginx/sharedllm.conf)",
  () => {
    const cleanups: (() => Promise<unknown> | unknown)[] = [];
    const replicas: Replica[] = [];
    let nats: TestNats;
    let front: Front;
    let ca: string;
    let cert: { cert: string; key: string };
    let apiKey: string;
    let joinToken: string;
    /** held streams (`stream: true`) send their first token, then wait for this before the last */
    let gate = deferred();

    /** streamed jobs: " first", then " last" once the gate opens; whole ones: two words at once */
    function serve(job: JobStart, send: (f: NodeFrame) => void): void {
      const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
      if (!job.stream) {
        streamWords(job, send, ["sim", "ulated"], usage);
        return;
      }
      const held = gate.promise;
      const chunk = (word: string, id: number) =>
        send({
          type: "job.chunk",
          jobId: job.jobId,
          data: JSON.stringify({ choices: [{ index: 0, delta: { content: word } }] }),
          tokens: [id],
        });
      chunk(" first", 1);
      void held.then(() => {
        chunk(" last", 2);
        send({ type: "job.end", jobId: job.jobId, usage });
      });
    }

    /** a chat through nginx; `padding`: that many bytes of white space after the JSON, a body too big to come with the headers */
    function chat(stream: boolean, padding = 0) {
      const body = JSON.stringify({ model: "sim-model", stream, max_tokens: 2, messages: [{ role: "user", content: "go" }] });
      return httpsFetch(`${front.url}/v1/chat/completions`, {
        ca,
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: body + " ".repeat(padding),
      });
    }

    /** A replica: `sharedllm coordinator start` on the shared database, with the site's secrets, in a process group of its own. */
    async function startReplica(databaseUrl: string): Promise<Omit<Replica, "node">> {
      const { home, cleanup } = await tempPaths("sharedllm-front-");
      cleanups.push(cleanup);
      await writeFile(join(home, "secrets.json"), JSON.stringify({ joinToken }), { mode: 0o600 });
      const args = ["coordinator", "start", "--port", "0", "--trust-proxy", "127.0.0.1", "--nats-url", nats.url];
      args.push("--max-registrations-per-minute", String(REGISTRATIONS));
      const child = spawn(process.execPath, [BIN, ...args], {
        env: { ...process.env, SHAREDLLM_HOME: home, DATABASE_URL: databaseUrl },
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
      });
      let stdout = "";
      let stderr = "";
      child.stdout?.on("data", (b) => {
        stdout += b;
      });
      child.stderr?.on("data", (b) => {
        stderr += b;
      });
      const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
      // asked to stop (SIGTERM: no jobs are left to drain), killed if it has not within 10 s
      cleanups.push(async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        child.kill("SIGTERM");
        const killed = setTimeout(() => process.kill(-(child.pid as number), "SIGKILL"), 10_000);
        await exited;
        clearTimeout(killed);
      });
      const url = await waitFor(
        "a replica's URL",
        () => {
          if (child.exitCode !== null) throw new Error(`a replica exited: ${stderr}`);
          return /coordinator: (http:\/\/\S+)\/v1/.exec(stdout)?.[1];
        },
        60_000,
      );
      const info = JSON.parse(await readFile(join(home, "coordinator.json"), "utf8")) as { apiKey: string };
      apiKey ??= info.apiKey;
      return { child, url, address: new URL(url).host, stderr: () => stderr, exited };
    }

    beforeAll(async () => {
      nats = await startNats();
      cleanups.push(() => nats.stop());
      const db = await testDatabase();
      cleanups.push(db.cleanup);
      const dir = await tempPaths("sharedllm-front-tls-");
      cleanups.push(dir.cleanup);
      const made = await frontCertificate(dir.home);
      cert = { cert: made.cert, key: made.key };
      ca = made.ca;
      joinToken = randomBytes(32).toString("base64url");
      for (let i = 0; i < 2; i++) {
        const r = await startReplica(db.databaseUrl as string);
        const node = new SimNode({ coordinatorUrl: r.url, joinToken, models: ["sim-model"], onJob: serve });
        await node.start();
        cleanups.push(() => node.stop());
        replicas.push({ ...r, node });
      }
      front = await startNginx({ replicas: replicas.map((r) => r.address), ...cert });
      cleanups.push(() => front.stop());
      // each node's speed comes with its first heartbeat: until every replica has both, a replica
      // would send a job to the node whose speed it knows, though its own is idle
      const ids = replicas.map((r) => r.node.id);
      await waitFor("every replica to know both nodes' speed", async () => {
        for (const r of replicas) {
          const { nodes } = (await (await fetch(`${r.url}/v1/network`)).json()) as NetworkResponse;
          if (!ids.every((id) => nodes.some((n) => n.id === id && n.tokensPerSecond === 42))) return false;
        }
        return true;
      });
    }, 120_000);

    afterAll(async () => {
      for (const c of cleanups.splice(0).reverse()) await c();
    });

    it("streams a completion through nginx token by token, over TLS", async () => {
      gate = deferred();
      const res = await chat(true);
      expect(res.status).toBe(200);
      expect(res.headers["content-type"]).toMatch(/^text\/event-stream/);
      // the first token reaches the client while the node still holds the last one back (a buffering
      // nginx holds the response until the coordinator gives up on the stalled stream: an error event)
      const events = reader(res.body);
      expect(await events.until(" first", 10_000)).not.toMatch(/ last|"error"/);
      gate.resolve();
      const all = await events.all();
      expect(all).toContain(" last");
      expect(all.trimEnd().endsWith("data: [DONE]")).toBe(true);
    });

    it("spreads requests over the replicas, and the openai client trusts nginx's certificate as Node is told to", async () => {
      const served = new Set<string>();
      for (let i = 0; i < 4; i++) {
        const res = await chat(false);
        expect(res.status).toBe(200);
        expect((JSON.parse(await res.text()) as { choices: { message: { content: string } }[] }).choices[0]?.message.content).toBe(
          "simulated",
        );
        served.add(String(res.headers["x-sharedllm-node"]));
      }
      expect(served).toEqual(new Set(replicas.map((r) => r.node.id)));
      // a user's program: the openai package, the site's CA given to Node
      const script = `import OpenAI from "openai";
      const client = new OpenAI({ baseURL: process.argv[1], apiKey: process.argv[2] });
      const r = await client.chat.completions.create({ model: "sim-model", messages: [{ role: "user", content: "go" }] });
      process.stdout.write(r.choices[0].message.content);`;
      const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script, `${front.url}/v1`, apiKey], {
        cwd: join(import.meta.dirname, "..", ".."),
        env: { ...process.env, NODE_EXTRA_CA_CERTS: cert.cert },
      });
      expect(stdout).toBe("simulated");
    });

    it("holds nodes' control channels through nginx, the machines of one address on one replica", async () => {
      // two machines of one LAN: one public address, as nginx sees them
      const lan = [0, 1].map(
        () =>
          new SimNode({
            coordinatorUrl: front.url,
            coordinatorCa: ca,
            joinToken,
            models: ["lan-model"],
            localAddress: "127.0.0.5",
            onJob: serve,
          }),
      );
      for (const n of lan) {
        await n.start();
        cleanups.push(() => n.stop());
      }
      // every replica shows the site's nodes, its own and the others'
      await waitFor("every replica to show both machines", async () => {
        for (const r of replicas) {
          const network = (await (await fetch(`${r.url}/v1/network`)).json()) as NetworkResponse;
          if (network.models.find((m) => m.id === "lan-model")?.nodes !== 2) return false;
        }
        return true;
      });
      // a job reaches them through nginx, whichever replica it lands on
      const res = await httpsFetch(`${front.url}/v1/chat/completions`, {
        ca,
        method: "POST",
        headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "lan-model", max_tokens: 2, messages: [{ role: "user", content: "go" }] }),
      });
      expect(res.status).toBe(200);
      expect(lan.map((n) => n.id)).toContain(res.headers["x-sharedllm-node"]);
      await res.text();
      // nginx logs each channel as it closes, with the replica that held it: both held by one
      for (const n of lan) n.stop();
      const channels = await waitFor("nginx to log both channels", async () => {
        const lines = (await front.accessLog()).split("\n").filter((l) => l.startsWith("127.0.0.5 ") && l.includes("/v1/control"));
        return lines.length === 2 ? lines : undefined;
      });
      const holders = new Set(channels.map((l) => /upstream=(\S+)/.exec(l)?.[1]));
      expect(holders.size).toBe(1);
      expect(replicas.map((r) => r.address)).toContain([...holders][0]);
    });

    it("tells a replica each client's own address (--trust-proxy): one client's registrations do not use up another's", async () => {
      const one = await startNginx({ replicas: [(replicas[1] as Replica).address], ...cert });
      cleanups.push(() => one.stop());
      const register = async (localAddress: string, headers: Record<string, string> = {}) => {
        const res = await httpsFetch(`${one.url}/v1/nodes/register`, {
          ca,
          method: "POST",
          localAddress,
          headers: { "content-type": "application/json", ...headers },
          body: "{}",
        });
        await res.text();
        return res.status;
      };
      // unsigned: refused, and counted against the address they come from
      for (let i = 0; i < REGISTRATIONS; i++) expect(await register("127.0.0.2")).toBe(401);
      expect(await register("127.0.0.2")).toBe(429);
      // naming another address does not help: nginx replaces X-Forwarded-For
      expect(await register("127.0.0.2", { "x-forwarded-for": "127.0.0.9" })).toBe(429);
      // another client behind the same nginx is not held back (without --trust-proxy both are nginx's 127.0.0.1)
      expect(await register("127.0.0.3")).toBe(401);
    });

    it("sends new requests to the other replica while one stops (SIGTERM), and the stopping one finishes its streams", async () => {
      gate = deferred();
      // a held stream on each replica: least_conn sends the second where the first is not
      const streams: { node: string; events: ReturnType<typeof reader> }[] = [];
      for (let i = 0; i < 2; i++) {
        const res = await chat(true);
        expect(res.status).toBe(200);
        const events = reader(res.body);
        await events.until(" first", 10_000);
        streams.push({ node: String(res.headers["x-sharedllm-node"]), events });
      }
      expect(new Set(streams.map((s) => s.node))).toEqual(new Set(replicas.map((r) => r.node.id)));
      const [stopping, staying] = replicas as [Replica, Replica];
      stopping.child.kill("SIGTERM");
      await waitFor("the replica to begin stopping", () => stopping.stderr().includes("stopping"), 10_000);
      // 1 MiB requests: nginx can send one on only because it holds the whole body (proxy_request_buffering)
      for (let i = 0; i < 4; i++) {
        const res = await chat(false, 1024 * 1024);
        expect(res.status).toBe(200);
        expect(res.headers["x-sharedllm-node"]).toBe(staying.node.id);
        await res.text();
      }
      // nginx did try the stopping replica: it closed the connection, and nginx sent the request on
      expect(await front.accessLog()).toContain(`upstream=${stopping.address}, ${staying.address} upstream_status=502, 200`);
      gate.resolve();
      for (const s of streams) expect((await s.events.all()).trimEnd().endsWith("data: [DONE]")).toBe(true);
      expect(await stopping.exited).toBe(0);
      // gone: nginx cannot connect to it, and the other answers
      const res = await chat(false);
      expect(res.status).toBe(200);
      expect(res.headers["x-sharedllm-node"]).toBe(staying.node.id);
      await res.text();
    });
  },
  120_000,
);
