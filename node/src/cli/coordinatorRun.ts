/**
 * Starting a coordinator from the CLI (`up`, `coordinator start`, `site init`): the
 * instance's secrets (join token, dev API key) live in `$SHAREDLLM_HOME/secrets.json`
 * (0600), the database under `$SHAREDLLM_HOME/db` unless DATABASE_URL is set. Beyond
 * loopback it serves HTTPS, or plain HTTP only when asked to in so many words.
 */
import { randomBytes, X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ApiKeyVerifier, type Coordinator, type CoordinatorOptions, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import type { Logger } from "pino";
import type { PrivateKeyAccount } from "viem/accounts";
import { loadKeyFile } from "../identity.js";
import { writeFileAtomic } from "../lock.js";
import { loadPins } from "../models/pins.js";
import type { ListenArgs } from "./args.js";

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
}

const isLoopback = (host: string) => host === "localhost" || host === "::1" || /^127\./.test(host);

async function readPem(file: string, flag: string): Promise<string> {
  return readFile(file, "utf8").catch((err: Error) => {
    throw new Error(`cannot read ${flag} ${file}: ${err.message}`);
  });
}

export async function runCoordinator(o: {
  home: string;
  host: string;
  port: number;
  databaseUrl?: string;
  logger: Logger;
  ledger?: CoordinatorOptions["ledger"];
  listen: ListenArgs;
}): Promise<RunningCoordinator> {
  const l = o.listen;
  if (Boolean(l.tlsCert) !== Boolean(l.tlsKey)) throw new Error("TLS needs both --tls-cert and --tls-key");
  if (!l.tlsCert && !isLoopback(o.host) && !l.insecureHttp) {
    throw new Error(
      `refusing to listen on ${o.host} without TLS: API keys, prompts, sign-in sessions and the join token would cross the network in clear. ` +
        "Pass --tls-cert <file> --tls-key <file> (a certificate for the address users and nodes reach), " +
        "or --insecure-http on a network you trust",
    );
  }
  const tls =
    l.tlsCert && l.tlsKey ? { cert: await readPem(l.tlsCert, "--tls-cert"), key: await readPem(l.tlsKey, "--tls-key") } : undefined;
  const cert = tls && new X509Certificate(tls.cert);
  const secrets = await loadSecrets(o.home);
  const coordinator = await startCoordinator({
    host: o.host,
    port: o.port,
    dataDir: join(o.home, "db"),
    databaseUrl: o.databaseUrl,
    joinToken: secrets.joinToken,
    logger: o.logger,
    ledger: o.ledger,
    models: await loadPins(o.home),
    tls,
    publicOrigins: l.publicUrl,
    rateLimits: { registrations: l.maxRegistrationsPerMinute, signIns: l.maxSignInsPerMinute },
  }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "EADDRINUSE") throw new Error(`port ${o.port} is in use; pick another with --port`);
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
  return { coordinator, joinToken: secrets.joinToken, apiKey, selfSignedCert: selfSigned, cert: tls?.cert };
}

/** The coordinator's own key (settlements, federation), in `$SHAREDLLM_HOME/coordinator-key.json`. */
export async function coordinatorAccount(home: string) {
  return (await loadKeyFile(join(home, "coordinator-key.json")))?.account as PrivateKeyAccount;
}
