/**
 * `sharedllm up`: the whole system on one machine with embedded defaults:
 * a coordinator (PGlite under $SHAREDLLM_HOME/db) and one node serving the
 * default model. Prints the URL, a dev API key and a curl line once ready, and
 * writes the same to $SHAREDLLM_HOME/up.json. Ctrl-C stops everything.
 */
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Command, Option } from "commander";
import { pino } from "pino";
import { startNodeDaemon } from "../daemon/daemon.js";
import { writeFileAtomic } from "../lock.js";
import { resolvePaths } from "../paths.js";
import { terminalProgress } from "../progress.js";
import { positiveInt } from "./args.js";
import { runCoordinator } from "./coordinatorRun.js";
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
        const { coordinator, joinToken, apiKey } = await runCoordinator({
          home: paths.home,
          host: o.host,
          port: o.port,
          databaseUrl: o.databaseUrl,
          logger,
        });
        const stops: Array<() => Promise<void>> = [() => coordinator.close()];
        const stopAll = async () => {
          for (const stop of stops.reverse()) await stop().catch((err) => logger.error({ err }, "stop failed"));
          await rm(upFile, { force: true });
        };
        try {
          const node = await startNodeDaemon({
            paths,
            coordinatorUrl: coordinator.url,
            joinToken,
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
