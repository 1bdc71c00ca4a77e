/**
 * Starting a coordinator from the CLI (`up` and `coordinator start`): the
 * instance's secrets (join token, dev API key) live in `$SHAREDLLM_HOME/secrets.json`
 * (0600), the database under `$SHAREDLLM_HOME/db` unless DATABASE_URL is set.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ApiKeyVerifier, type Coordinator, type CoordinatorOptions, createApiKey, startCoordinator } from "@sharedllm/coordinator";
import type { Logger } from "pino";
import type { PrivateKeyAccount } from "viem/accounts";
import { loadKeyFile } from "../identity.js";
import { writeFileAtomic } from "../lock.js";
import { loadPins } from "../models/pins.js";

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
}

export async function runCoordinator(o: {
  home: string;
  host: string;
  port: number;
  databaseUrl?: string;
  logger: Logger;
  ledger?: CoordinatorOptions["ledger"];
}): Promise<RunningCoordinator> {
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
  }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "EADDRINUSE") throw new Error(`port ${o.port} is in use; pick another with --port`);
    throw err;
  });
  let apiKey = secrets.devApiKey;
  if (!apiKey || !(await new ApiKeyVerifier(coordinator.db).verify(apiKey))) {
    apiKey = (await createApiKey(coordinator.db, "dev")).secret;
    await saveSecrets(o.home, { ...secrets, devApiKey: apiKey });
  }
  return { coordinator, joinToken: secrets.joinToken, apiKey };
}

/** The coordinator's own key (settlements, federation), in `$SHAREDLLM_HOME/coordinator-key.json`. */
export async function coordinatorAccount(home: string) {
  return (await loadKeyFile(join(home, "coordinator-key.json")))?.account as PrivateKeyAccount;
}
