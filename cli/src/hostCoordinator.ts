/**
 * Hosting a coordinator from the CLI (`up`, `coordinator start`, `site init`): start it, record
 * it in a run file, wait for Ctrl-C, stop everything. The instance's secrets (join token, dev API
 * key) live in `$SHAREDLLM_HOME/secrets.json` (0600), the database under `$SHAREDLLM_HOME/db`
 * unless DATABASE_URL is set. Beyond loopback it serves HTTPS, or plain HTTP only when asked to
 * in so many words.
 */
import { randomBytes, X509Certificate } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import {
  ApiKeyVerifier,
  type BrowserBlob,
  browserLinkToken,
  type Coordinator,
  type CoordinatorOptions,
  createApiKey,
  startCoordinator,
} from "@sharedllm/coordinator";
import { loadKeyFile, loadPins, ModelStore, resolvePaths, SharedLLMError, writeFileAtomic } from "@sharedllm/node";
import type { Logger } from "pino";
import type { PrivateKeyAccount } from "viem/accounts";
import type { ListenArgs } from "./args.js";
import { untilAborted } from "./shutdown.js";

interface Secrets {
  /** the site's join token: nodes register with it */
  joinToken: string;
  devApiKey?: string;
}

async function loadSecrets(home: string): Promise<Secrets> {
  const file = join(home, "secrets.json");
  try {
    return JSON.parse(await readFile(file, "utf8")) as Secrets;
  } catch {
    const s: Secrets = { joinToken: randomBytes(32).toString("base64url") };
    await saveSecrets(home, s);
    return s;
  }
}

async function saveSecrets(home: string, s: Secrets) {
  await writeFileAtomic(join(home, "secrets.json"), `${JSON.stringify(s, null, 2)}\n`, 0o600);
}

export interface RunningCoordinator {
  coordinator: Coordinator;
  joinToken: string;
  /** a dev API key, reused across runs while the database still knows it */
  apiKey: string;
  /** the certificate file nodes must be told to trust (--coordinator-ca) when it is self-signed */
  selfSignedCert?: string;
  /** the PEM certificate it serves, when it serves HTTPS */
  cert?: string;
  /** what a banner says of the Contribute page: the link visitors' tabs join by (none while browser nodes are off) */
  contribute: string[];
}

/** What a hosted coordinator's caller reports once everything is up. */
export interface Hosted {
  /** what the run file records (0600) */
  record: object;
  /** the lines printed for the user */
  banner: string[];
  /** stops what the caller started beside the coordinator (up: the local node); runs before the coordinator closes */
  stop?: () => Promise<void>;
}

export interface HostOptions {
  home: string;
  host: string;
  port: number;
  databaseUrl?: string;
  /** one of several replicas (docs/replicas.md) */
  replicas?: CoordinatorOptions["replicas"];
  logger: Logger;
  ledger?: CoordinatorOptions["ledger"];
  federation?: CoordinatorOptions["federation"];
  /** the chain's history (docs/indexing.md): on with a chain unless false */
  indexer?: CoordinatorOptions["indexer"];
  listen: ListenArgs;
  /** the process's shutdown signal: the coordinator runs until it fires */
  signal: AbortSignal;
  /** the run file that says this coordinator runs: written once everything is up, removed when it stops */
  runFile: string;
  /** once the coordinator listens: starts what runs beside it and says what to record and print */
  ready: (running: RunningCoordinator) => Promise<Hosted> | Hosted;
  /** stops what the caller started before the coordinator (up: the dev chain); runs last, also when starting fails */
  stopBefore?: () => Promise<void>;
}

/** How long a stopping coordinator waits for its jobs in flight (a second signal stops at once). */
const DRAIN_MS = 30_000;

/** Runs a coordinator in the foreground until the shutdown signal, then stops it and what runs beside it. */
export async function hostCoordinator(o: HostOptions): Promise<void> {
  await rm(o.runFile, { force: true });
  const stops: Array<() => Promise<void>> = o.stopBefore ? [o.stopBefore] : [];
  const stopAll = async () => {
    for (const stop of stops.reverse()) await stop().catch((err) => o.logger.error({ err }, "stop failed"));
    await rm(o.runFile, { force: true });
  };
  let running: Awaited<ReturnType<typeof startListening>>;
  try {
    running = await startListening(o);
    const { coordinator } = running;
    stops.push(() => coordinator.close());
    const hosted = await o.ready(running);
    if (hosted.stop) stops.push(hosted.stop);
    await writeFileAtomic(o.runFile, `${JSON.stringify(hosted.record, null, 2)}\n`, 0o600);
    process.stdout.write(`${hosted.banner.join("\n")}\n`);
  } catch (err) {
    await stopAll();
    throw err;
  }
  await untilAborted(o.signal);
  process.stderr.write("stopping...\n");
  // the jobs in flight end first (new ones are refused), while their nodes still run
  await running.coordinator.drain(DRAIN_MS);
  await stopAll();
  process.stderr.write("stopped\n");
}

const isLoopback = (host: string) => host === "localhost" || host === "::1" || /^127\./.test(host);

async function readPem(file: string, flag: string): Promise<string> {
  return readFile(file, "utf8").catch((err: Error) => {
    throw new SharedLLMError("config", `cannot read ${flag} ${file}: ${err.message}`);
  });
}

function certificate(pem: string, file: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch {
    throw new SharedLLMError("config", `--tls-cert ${file} is not a PEM certificate`);
  }
}

/** What a PostgreSQL connection fails with when the URL points nowhere usable: no server, no such host, wrong password, no such database. */
const DATABASE_UNUSABLE = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "28P01", "28000", "3D000"]);

/** Where a database URL points, without the password it may hold. */
function databaseWhere(url: string): string {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}`;
  } catch {
    return "--database-url";
  }
}

async function startListening(o: HostOptions): Promise<RunningCoordinator> {
  const l = o.listen;
  if (Boolean(l.tlsCert) !== Boolean(l.tlsKey)) throw new SharedLLMError("config", "TLS needs both --tls-cert and --tls-key");
  if (!l.tlsCert && !isLoopback(o.host) && !l.insecureHttp) {
    throw new SharedLLMError(
      "config",
      `refusing to listen on ${o.host} without TLS: API keys, prompts, sign-in sessions and the join token would cross the network in clear. ` +
        "Pass --tls-cert <file> --tls-key <file> (a certificate for the address users and nodes reach), " +
        "or --insecure-http on a network you trust",
    );
  }
  const tls =
    l.tlsCert && l.tlsKey ? { cert: await readPem(l.tlsCert, "--tls-cert"), key: await readPem(l.tlsKey, "--tls-key") } : undefined;
  const cert = tls && certificate(tls.cert, l.tlsCert as string);
  const secrets = await loadSecrets(o.home);
  const pins = await loadPins(o.home);
  const coordinator = await startCoordinator({
    host: o.host,
    port: o.port,
    dataDir: join(o.home, "db"),
    databaseUrl: o.databaseUrl,
    replicas: o.replicas,
    joinToken: secrets.joinToken,
    logger: o.logger,
    ledger: o.ledger,
    federation: o.federation,
    indexer: o.indexer,
    models: pins,
    browserNodes: { mode: l.browserNodes ?? "token", blobs: await browserBlobs(pins) },
    tls,
    publicOrigins: l.publicUrl,
    rateLimits: { registrations: l.maxRegistrationsPerMinute, signIns: l.maxSignInsPerMinute },
    trustProxy: l.trustProxy,
    queueWaitMs: l.queueWait * 1000,
  }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "EADDRINUSE") throw new SharedLLMError("busy", `port ${o.port} is in use; pick another with --port`);
    const cause = err.cause as NodeJS.ErrnoException | undefined;
    if (o.databaseUrl && DATABASE_UNUSABLE.has(err.code ?? cause?.code ?? "")) {
      throw new SharedLLMError("unreachable", `cannot use the PostgreSQL database at ${databaseWhere(o.databaseUrl)}: ${err.message}`, {
        hint: "check --database-url (or DATABASE_URL), or leave it out to use the embedded database",
        cause: err,
      });
    }
    throw err;
  });
  let apiKey = secrets.devApiKey;
  if (!apiKey || !(await new ApiKeyVerifier(coordinator.db).verify(apiKey))) {
    apiKey = (await createApiKey(coordinator.db, "dev")).secret;
    await saveSecrets(o.home, { ...secrets, devApiKey: apiKey });
  }
  if (!tls && !isLoopback(o.host)) {
    process.stderr.write(
      `warning: serving plain HTTP on ${o.host} (--insecure-http): API keys, prompts and the join token cross the network in clear\n`,
    );
  }
  const selfSigned = cert && l.tlsCert && cert.checkIssued(cert) ? resolve(l.tlsCert) : undefined;
  const mode = l.browserNodes ?? "token";
  const page = `${coordinator.url}/contribute`;
  const contribute =
    mode === "off"
      ? []
      : [`  contribute: ${mode === "token" ? `${page}#token=${browserLinkToken(secrets.joinToken)}` : page} (a browser tab serves jobs)`];
  return { coordinator, joinToken: secrets.joinToken, apiKey, selfSignedCert: selfSigned, cert: tls?.cert, contribute };
}

/**
 * The model files browser nodes may fetch from this machine: the pinned models that are in its
 * model store (the coordinator keeps to those within its size cap).
 */
async function browserBlobs(pins: { id: string; sha256: string }[]): Promise<BrowserBlob[]> {
  const store = new ModelStore(resolvePaths().cache);
  const stored = await store.list();
  return pins.flatMap((p) => {
    const e = stored.find((m) => m.sha256 === p.sha256);
    return e ? [{ id: p.id, sha256: e.sha256, path: store.blobPath(e.sha256), sizeBytes: e.size }] : [];
  });
}

/** The coordinator's own key (settlements, federation), in `$SHAREDLLM_HOME/coordinator-key.json`. */
export async function coordinatorAccount(home: string) {
  return (await loadKeyFile(join(home, "coordinator-key.json")))?.account as PrivateKeyAccount;
}

/** The coordinator key's secret itself: federation derives its pair keys from it (ECDH). Never log it. */
export async function coordinatorPrivateKey(home: string): Promise<`0x${string}`> {
  await coordinatorAccount(home);
  return (JSON.parse(await readFile(join(home, "coordinator-key.json"), "utf8")) as { privateKey: `0x${string}` }).privateKey;
}
