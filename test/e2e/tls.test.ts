/**
 * TLS on the coordinator: the commands that start one refuse to listen beyond loopback in clear
 * unless told to; with a certificate the API answers over HTTPS and a node registers over HTTPS
 * and holds its control channel over WSS, verifying the certificate (a node told to trust another
 * certificate is refused). Certificates are made at test time with the openssl CLI.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { get } from "node:https";
import { join } from "node:path";
import { Writable } from "node:stream";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { ControlClient, registerNode, sessionCredentials } from "@sharedllm/node";
import { pino } from "pino";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { quietLogger, type TestDatabase, tempPaths, testDatabase, waitFor } from "../helpers.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");
const joinToken = randomBytes(32).toString("base64url");
let dir: Awaited<ReturnType<typeof tempPaths>>;
let db: TestDatabase;
let coordinator: Coordinator;
let cert: string;
let otherCert: string;

/** A self-signed certificate for 127.0.0.1, as an operator would make one for a site. */
function selfSigned(name: string): { cert: string; key: string } {
  const cert = join(dir.home, `${name}.crt`);
  const key = join(dir.home, `${name}.key`);
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      `/CN=${name}`,
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ],
    { stdio: "ignore" },
  );
  return { cert, key };
}

beforeAll(async () => {
  dir = await tempPaths("sharedllm-tls-");
  const site = selfSigned("site");
  cert = await readFile(site.cert, "utf8");
  otherCert = await readFile(selfSigned("impostor").cert, "utf8");
  db = await testDatabase();
  coordinator = await startCoordinator({
    host: "127.0.0.1",
    port: 0,
    ...db,
    joinToken,
    logger: quietLogger(),
    tls: { cert, key: await readFile(site.key, "utf8") },
  });
});
afterAll(async () => {
  await coordinator?.close();
  await db?.cleanup();
  await dir?.cleanup();
});

/** Runs the CLI; `output.text` grows with its stdout and stderr, `exited` gives its exit code. */
function cli(args: string[]) {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, SHAREDLLM_HOME: join(dir.home, "cli") },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output = { text: "" };
  child.stdout.on("data", (b) => {
    output.text += b;
  });
  child.stderr.on("data", (b) => {
    output.text += b;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, output, exited };
}

const health = (ca?: string) =>
  new Promise<number>((resolve, reject) => {
    get(`${coordinator.url}/healthz`, { ...(ca && { ca }) }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    }).on("error", reject);
  });

/** A node's control client with nothing behind it; its log lines are kept. */
function controlClient(account: ReturnType<typeof privateKeyToAccount>, ca: string) {
  const lines: string[] = [];
  const logger = pino(
    { level: "debug" },
    new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  );
  const nodeId = account.address.toLowerCase();
  const client = new ControlClient({
    coordinatorUrl: coordinator.url,
    coordinatorCa: ca,
    credentials: sessionCredentials({ coordinatorUrl: coordinator.url, coordinatorCa: cert, joinToken, account }),
    hello: () => ({ nodeId, engine: { tag: "sim", variant: "cpu" }, models: [], slots: 1 }),
    status: () => ({ load: 0, freeMemoryBytes: 0, loadedModels: [], tokensPerSecond: 0 }),
    runJob: async () => {},
    loadModel: () => {},
    signReceipt: async () => {
      throw new Error("no receipts here");
    },
    logger,
  });
  return { client, lines, nodeId };
}

describe("coordinator TLS", () => {
  it("refuses to listen beyond loopback in clear, saying why and how, unless --insecure-http is given", async () => {
    for (const args of [
      ["coordinator", "start", "--host", "0.0.0.0", "--port", "0"],
      ["site", "init", "--port", "0"],
    ]) {
      const r = cli(args);
      expect(await r.exited, r.output.text).toBe(1);
      expect(r.output.text).toContain("refusing to listen on 0.0.0.0 without TLS");
      expect(r.output.text).toContain("--tls-cert <file> --tls-key <file>");
      expect(r.output.text).toContain("--insecure-http");
    }
    const insecure = cli(["coordinator", "start", "--host", "0.0.0.0", "--port", "0", "--insecure-http"]);
    try {
      await waitFor("the coordinator to start in clear", () => insecure.output.text.includes("join a node"), 30_000);
      expect(insecure.output.text).toContain("warning: serving plain HTTP on 0.0.0.0 (--insecure-http)");
    } finally {
      insecure.child.kill("SIGTERM");
      await insecure.exited;
    }
  });

  it("answers over HTTPS with the certificate; a client that does not trust it is refused", async () => {
    expect(coordinator.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await health(cert)).toBe(200);
    await expect(health()).rejects.toThrow(/self-signed certificate/);
    await expect(health(otherCert)).rejects.toThrow(/self-signed certificate|unable to verify/);
  });

  it("a node registers over HTTPS and connects over WSS, verifying the certificate; another certificate is refused", async () => {
    const account = privateKeyToAccount(generatePrivateKey());
    await expect(registerNode({ coordinatorUrl: coordinator.url, coordinatorCa: otherCert, joinToken, account })).rejects.toThrow(
      /self-signed certificate|unable to verify/,
    );

    const impostor = controlClient(account, otherCert);
    void impostor.client.start();
    await waitFor("the WSS dial to fail verification", () =>
      impostor.lines.some((l) => l.includes("control channel error") && /self-signed certificate|unable to verify/.test(l)),
    );
    await impostor.client.close();
    expect(coordinator.fleet.get(impostor.nodeId)).toBeUndefined();

    const node = controlClient(privateKeyToAccount(generatePrivateKey()), cert);
    await node.client.start();
    expect(coordinator.fleet.get(node.nodeId)).toBeDefined();
    await node.client.close();
  });
});
