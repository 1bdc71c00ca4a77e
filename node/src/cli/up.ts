/**
 * `sharedllm up`: the whole system on one machine with embedded defaults:
 * a coordinator (PGlite under $SHAREDLLM_HOME/db) and one node serving the
 * default model. Prints the URL, a dev API key and a curl line once ready, and
 * writes the same to $SHAREDLLM_HOME/up.json. Ctrl-C stops everything.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { createApiKey, hashApiKey, startCoordinator } from "@sharedllm/coordinator";
import { Command, Option } from "commander";
import { pino } from "pino";
import { startNodeDaemon } from "../daemon/daemon.js";
import { writeFileAtomic } from "../lock.js";
import { resolvePaths } from "../paths.js";
import { terminalProgress } from "../progress.js";
import { positiveInt } from "./args.js";
import { shutdownSignal } from "./shutdown.js";

export interface UpFile {
  coordinatorUrl: string;
  apiKey: string;
  models: string[];
  /** the local node's own llama-server, for debugging and benchmarks */
  engineUrl: string;
  pid: number;
  startedAt: string;
}

interface Secrets {
  /** the local site's join token: the local node registers with it */
  joinToken: string;
  devApiKey?: string;
}

/** Instance secrets (node credential, dev key), created once, readable only by the owner. */
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

export function upCommand(): Command {
  return new Command("up")
    .description("run a coordinator and a local node with the default model on this machine")
    .addOption(new Option("--port <port>", "coordinator port (0 = any free port)").default(8787).argParser(positiveInt))
    .option("--host <host>", "address to listen on", "127.0.0.1")
    .option("--model <source>", "model to serve: an id in the store, 'default', hf:..., or a .gguf path", "default")
    .addOption(new Option("--slots <n>", "parallel requests on the node").default(2).argParser(positiveInt))
    .addOption(new Option("--database-url <url>", "PostgreSQL instead of embedded PGlite").env("DATABASE_URL"))
    .option("--engine-args <args>", 'extra llama-server arguments, space-separated (e.g. "--poll 0")')
    .option("--verbose", "log at info level")
    .action(
      async (o: {
        port: number;
        host: string;
        model: string;
        slots: number;
        databaseUrl?: string;
        engineArgs?: string;
        verbose?: boolean;
      }) => {
        const signal = shutdownSignal();
        const paths = resolvePaths();
        await mkdir(paths.home, { recursive: true });
        const upFile = join(paths.home, "up.json");
        await rm(upFile, { force: true });
        const logger = pino({ level: o.verbose ? "info" : "warn" }, pino.destination(2));
        const progress = terminalProgress();
        const secrets = await loadSecrets(paths.home);

        const coordinator = await startCoordinator({
          host: o.host,
          port: o.port,
          dataDir: join(paths.home, "db"),
          databaseUrl: o.databaseUrl,
          joinToken: secrets.joinToken,
          logger,
        }).catch((err: NodeJS.ErrnoException) => {
          if (err.code === "EADDRINUSE") throw new Error(`port ${o.port} is in use; pick another with --port`);
          throw err;
        });
        const stops: Array<() => Promise<void>> = [() => coordinator.close()];
        const stopAll = async () => {
          for (const stop of stops.reverse()) await stop().catch((err) => logger.error({ err }, "stop failed"));
          await rm(upFile, { force: true });
        };
        try {
          // reuse the dev key across runs while the database still knows it
          let apiKey = secrets.devApiKey;
          const known = apiKey
            ? await coordinator.db
                .selectFrom("api_keys")
                .select("id")
                .where("key_hash", "=", hashApiKey(apiKey))
                .where("revoked_at", "is", null)
                .executeTakeFirst()
            : undefined;
          if (!apiKey || !known) {
            apiKey = (await createApiKey(coordinator.db, "dev")).secret;
            await saveSecrets(paths.home, { ...secrets, devApiKey: apiKey });
          }
          const node = await startNodeDaemon({
            paths,
            coordinatorUrl: coordinator.url,
            joinToken: secrets.joinToken,
            model: o.model,
            slots: o.slots,
            engineArgs: o.engineArgs?.split(/\s+/).filter(Boolean),
            logger,
            progress,
            signal,
          });
          stops.push(() => node.stop());
          const models = [...new Set(coordinator.fleet.list().flatMap((n) => [...n.models.keys()]))];
          const up: UpFile = {
            coordinatorUrl: coordinator.url,
            apiKey,
            models,
            engineUrl: node.llama.url,
            pid: process.pid,
            startedAt: new Date().toISOString(),
          };
          await writeFileAtomic(upFile, `${JSON.stringify(up, null, 2)}\n`, 0o600);
          process.stdout.write(
            [
              "",
              `SharedLLM is up: ${coordinator.url}/v1 (OpenAI-compatible)`,
              `  models:  ${models.join(", ")}`,
              `  API key: ${apiKey}`,
              "",
              "Try it:",
              `  curl ${coordinator.url}/v1/chat/completions -H "Authorization: Bearer ${apiKey}" -H "Content-Type: application/json" \\`,
              `    -d '{"model":"${models[0]}","messages":[{"role":"user","content":"Hello!"}]}'`,
              "",
              `(written to ${upFile}; Ctrl-C stops everything)`,
              "",
            ].join("\n"),
          );
        } catch (err) {
          await stopAll();
          throw err;
        }
        await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
        process.stderr.write("stopping...\n");
        await stopAll();
        process.stderr.write("stopped\n");
      },
    );
}
