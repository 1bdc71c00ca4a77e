/**
 * `sharedllm node init|start|status|pause|resume|leave`: this machine as a node
 * of a site. `start` runs the daemon in the foreground; the other commands talk
 * to a running daemon through `$SHAREDLLM_HOME/node-run.json` (its pid) and a
 * command file plus SIGUSR1.
 */
import { X509Certificate } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  isAlive,
  loadNodeIdentity,
  registerNode,
  resolvePaths,
  SharedLLMError,
  startNodeDaemon,
  startWorkerDaemon,
  terminalProgress,
  writeFileAtomic,
} from "@sharedllm/node";
import { type NetworkNode, type NetworkResponse, UNAVAILABLE_REASONS } from "@sharedllm/protocol";
import { Command, Option } from "commander";
import type { Logger } from "pino";
import { commandLogger, slotCount, wholeNumber } from "./args.js";
import {
  addOwnerOptions,
  commandFile,
  type OwnerArgs,
  type OwnerCommand,
  type OwnerSettings,
  ownerCommands,
  ownerSettings,
} from "./ownerOptions.js";
import { shutdownSignal } from "./shutdown.js";

export interface NodeConfig {
  coordinatorUrl: string;
  joinToken: string;
  /** PEM certificate(s) trusted for an https coordinator (a self-signed site certificate); default: the system's CAs */
  coordinatorCa?: string;
}

/** The --coordinator-ca file's certificate(s), checked to be PEM. */
export async function readCoordinatorCa(file: string | undefined): Promise<string | undefined> {
  if (!file) return undefined;
  const pem = await readFile(file, "utf8").catch((err: Error) => {
    throw new SharedLLMError("config", `cannot read --coordinator-ca ${file}: ${err.message}`);
  });
  try {
    new X509Certificate(pem);
  } catch {
    throw new SharedLLMError("config", `--coordinator-ca ${file} is not a PEM certificate`);
  }
  return pem;
}

export const coordinatorCaOption = () =>
  new Option("--coordinator-ca <file>", "PEM certificate to trust for an https coordinator with a self-signed certificate");

export interface NodeRun {
  pid: number;
  nodeId: string;
  coordinatorUrl: string;
  startedAt: string;
}

export const files = (home: string) => ({
  config: join(home, "node-config.json"),
  run: join(home, "node-run.json"),
  command: commandFile(home),
});

export async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}

export function checkUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error();
    return u.origin;
  } catch {
    throw new SharedLLMError("config", `"${url}" is not a coordinator URL; write e.g. http://192.168.1.10:8787`);
  }
}

/** The coordinator and join token from flags, else from `node init`. */
async function nodeConfig(home: string, o: { coordinator?: string; token?: string; coordinatorCa?: string }): Promise<NodeConfig> {
  const saved = await readJson<NodeConfig>(files(home).config);
  const coordinatorUrl = o.coordinator ?? saved?.coordinatorUrl;
  const joinToken = o.token ?? saved?.joinToken;
  if (!coordinatorUrl || !joinToken) {
    throw new SharedLLMError(
      "config",
      "no coordinator configured: pass --coordinator <url> --token <join token>, or run sharedllm node init first",
    );
  }
  const coordinatorCa = (await readCoordinatorCa(o.coordinatorCa)) ?? (o.coordinator ? undefined : saved?.coordinatorCa);
  return { coordinatorUrl: checkUrl(coordinatorUrl), joinToken, ...(coordinatorCa && { coordinatorCa }) };
}

/** Records the daemon running for this home (what `node status|pause|resume|leave` talk to). */
export async function recordRun(home: string, nodeId: string, coordinatorUrl: string): Promise<void> {
  const run: NodeRun = { pid: process.pid, nodeId, coordinatorUrl, startedAt: new Date().toISOString() };
  await writeFileAtomic(files(home).run, `${JSON.stringify(run, null, 2)}\n`);
}

/** The running daemon of this home, if any. */
export async function runningNode(home: string): Promise<NodeRun | undefined> {
  const run = await readJson<NodeRun>(files(home).run);
  return run && isAlive(run.pid) ? run : undefined;
}

async function tellDaemon(home: string, command: OwnerCommand): Promise<NodeRun> {
  const run = await runningNode(home);
  if (!run) throw new SharedLLMError("not_running", `no node daemon is running for ${home}; start one with: sharedllm node start`);
  await writeFile(files(home).command, command);
  process.kill(run.pid, "SIGUSR1");
  return run;
}

export function nodeCommand(): Command {
  const cmd = new Command("node").description("run this machine as a node of a site");

  cmd
    .command("init")
    .description("create this node's key and check that the coordinator accepts it")
    .requiredOption("--coordinator <url>", "the site's coordinator, e.g. http://192.168.1.10:8787")
    .requiredOption("--token <token>", "the site's join token")
    .addOption(coordinatorCaOption())
    .action(async (o: { coordinator: string; token: string; coordinatorCa?: string }) => {
      const { home } = resolvePaths();
      const config = await nodeConfig(home, o);
      const identity = await loadNodeIdentity(home);
      if (!identity) throw new SharedLLMError("config", `could not create the node key in ${home}`);
      await registerNode({ ...config, account: identity.account }).catch((err: Error) => {
        if (err instanceof SharedLLMError) throw err;
        throw new SharedLLMError("unreachable", `cannot reach ${config.coordinatorUrl}: ${err.message}`, { cause: err });
      });
      await mkdir(home, { recursive: true });
      await writeFileAtomic(files(home).config, `${JSON.stringify(config, null, 2)}\n`, 0o600);
      process.stdout.write(`node ${identity.nodeId} ${identity.created ? "created and " : ""}accepted by ${config.coordinatorUrl}\n`);
    });

  const start = cmd
    .command("start")
    .description("run the node daemon in the foreground (Ctrl-C drains and stops it)")
    .option("--coordinator <url>", "the site's coordinator (default: from node init)")
    .option("--token <token>", "the site's join token (default: from node init)")
    .addOption(coordinatorCaOption())
    .option("--model <source>", "model to serve: an id in the store, 'default', hf:..., or a .gguf path", "default")
    .addOption(new Option("--slots <n>", "parallel requests").default(2).argParser(slotCount));
  addOwnerOptions(start)
    .option("--engine-args <args>", "extra llama-server arguments, space-separated")
    .addOption(
      new Option(
        "--role <role>",
        "solo: serve the model here; worker: lend this machine's rpc-server to cluster heads; head: split the model over workers",
      )
        .choices(["solo", "worker", "head"])
        .default("solo"),
    )
    .option("--members <ids>", "head: the workers to split over, comma-separated node ids")
    .addOption(new Option("--tunnel-port <port>", "worker: port of the RPC tunnel (0 = any free port)").default(0).argParser(wholeNumber))
    .option("--tunnel-host <host>", "worker: address the tunnel listens on", "0.0.0.0")
    .option("--heads <ids>", "worker: the only cluster heads it serves, comma-separated node ids (default: any head the coordinator names)")
    .option(
      "--auditor",
      "offer to audit other nodes' jobs with this node's copy of their model (the coordinator uses it only if it trusts this node)",
    )
    .option("--verbose", "log at info level")
    .action(
      async (
        o: {
          role: "solo" | "worker" | "head";
          members?: string;
          tunnelPort: number;
          tunnelHost: string;
          heads?: string;
          coordinator?: string;
          token?: string;
          coordinatorCa?: string;
          model: string;
          slots: number;
          engineArgs?: string;
          auditor?: boolean;
          verbose?: boolean;
        } & OwnerArgs,
      ) => {
        const signal = shutdownSignal();
        const paths = resolvePaths();
        const config = await nodeConfig(paths.home, o);
        const owner = ownerSettings(o);
        if (await runningNode(paths.home))
          throw new SharedLLMError("busy", `a node daemon already runs for ${paths.home}; see: sharedllm node status`);
        const logger = commandLogger(o.verbose);
        if (o.role === "worker" && o.auditor)
          throw new SharedLLMError(
            "config",
            "a worker serves no model of its own, so it cannot audit: drop --auditor, or start it as --role solo",
          );
        if (o.role === "worker") return runWorker(paths, config, o, owner, logger, signal);
        const members =
          o.members
            ?.split(",")
            .map((m) => m.trim().toLowerCase())
            .filter(Boolean) ?? [];
        if (o.role === "head" && !members.length)
          throw new SharedLLMError("config", "a head needs --members <node id,...>: the workers to split the model over");
        if (members.some((m) => !/^0x[0-9a-f]{40}$/.test(m)))
          throw new SharedLLMError("config", "--members takes node ids (0x and 40 hex digits), comma-separated");
        const daemon = await startNodeDaemon({
          cluster: o.role === "head" ? { members } : undefined,
          auditor: o.auditor,
          paths,
          ...config,
          ...owner,
          model: o.model,
          slots: o.slots,
          engineArgs: o.engineArgs?.split(/\s+/).filter(Boolean),
          logger,
          progress: terminalProgress(),
          signal,
        });
        const f = files(paths.home);
        await recordRun(paths.home, daemon.nodeId, config.coordinatorUrl);
        process.stdout.write(`node ${daemon.nodeId} serving ${daemon.modelId} for ${config.coordinatorUrl}\n`);
        const how = await ownerCommands(paths.home, signal, daemon);
        if (how === "leave") {
          process.stderr.write("leaving: finishing jobs in flight...\n");
          const { drained } = await daemon.leave();
          process.stderr.write(drained ? "left the site\n" : "left the site (some jobs did not finish in time)\n");
        } else {
          daemon.drain();
          await daemon.control.drained(30_000);
          await daemon.stop();
          process.stderr.write("stopped\n");
        }
        await rm(f.run, { force: true });
      },
    );

  cmd
    .command("status")
    .description("show this node's id, daemon and what the coordinator sees")
    .option("--json", "print JSON")
    .action(async (o: { json?: boolean }) => {
      const { home } = resolvePaths();
      const identity = await loadNodeIdentity(home, { create: false });
      const config = await readJson<NodeConfig>(files(home).config);
      const run = await runningNode(home);
      const coordinatorUrl = run?.coordinatorUrl ?? config?.coordinatorUrl;
      let seen: unknown;
      if (identity && coordinatorUrl) {
        try {
          const net = (await (
            await fetch(`${coordinatorUrl}/v1/network`, { signal: AbortSignal.timeout(5_000) })
          ).json()) as NetworkResponse;
          seen = net.nodes.find((n) => n.id === identity.nodeId) ?? "unknown to the coordinator";
        } catch (err) {
          seen = `coordinator unreachable: ${(err as Error).message}`;
        }
      }
      const status = {
        nodeId: identity?.nodeId ?? null,
        coordinatorUrl: coordinatorUrl ?? null,
        daemon: run ? { pid: run.pid, startedAt: run.startedAt } : null,
        coordinatorView: seen ?? null,
      };
      if (o.json) return void process.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
      if (!identity) return void process.stdout.write("not a node yet: run sharedllm node init --coordinator <url> --token <token>\n");
      process.stdout.write(
        [
          `node:        ${identity.nodeId}`,
          `coordinator: ${coordinatorUrl ?? "not configured"}`,
          `daemon:      ${run ? `running (pid ${run.pid}, since ${run.startedAt})` : "not running"}`,
          ...(typeof seen === "object" ? [`taking jobs: ${takingJobs(seen as NetworkNode)}`] : []),
          `coordinator sees: ${typeof seen === "string" ? seen : JSON.stringify(seen)}`,
          "",
        ].join("\n"),
      );
    });

  for (const [name, what] of [
    ["pause", "stop taking jobs; jobs in flight are handed off to other nodes at once"],
    ["resume", "take jobs again"],
    ["leave", "drain (finish jobs in flight), deregister from the site and stop the daemon"],
  ] as const) {
    cmd
      .command(name)
      .description(what)
      .action(async () => {
        const { home } = resolvePaths();
        const run = await tellDaemon(home, name);
        if (name === "leave") {
          const deadline = Date.now() + 130_000;
          while (isAlive(run.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
        }
        process.stdout.write(`${name}: sent to node daemon pid ${run.pid}\n`);
      });
  }
  return cmd;
}

/** The coordinator's view of whether a node takes jobs, in words. */
function takingJobs(n: NetworkNode): string {
  if (n.accepting) return "yes";
  if (n.reason) return `no: ${UNAVAILABLE_REASONS[n.reason]}${n.reason === "paused" ? " (sharedllm node resume)" : ""}`;
  return n.role === "head" ? "no: its cluster has no split yet" : "no";
}

async function runWorker(
  paths: ReturnType<typeof resolvePaths>,
  config: NodeConfig,
  o: { tunnelPort: number; tunnelHost: string; heads?: string },
  owner: OwnerSettings,
  logger: Logger,
  signal: AbortSignal,
) {
  const heads = o.heads
    ?.split(",")
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  if (heads?.some((h) => !/^0x[0-9a-f]{40}$/.test(h)))
    throw new SharedLLMError("config", "--heads takes node ids (0x and 40 hex digits), comma-separated");
  const worker = await startWorkerDaemon({
    paths,
    ...config,
    ...owner,
    tunnelHost: o.tunnelHost,
    tunnelPort: o.tunnelPort,
    heads,
    logger,
    progress: terminalProgress(),
    signal,
  });
  const f = files(paths.home);
  await recordRun(paths.home, worker.nodeId, config.coordinatorUrl);
  process.stdout.write(
    `worker ${worker.nodeId} lends its rpc-server through tunnel port ${worker.tunnel.port} for ${config.coordinatorUrl}\n`,
  );
  if ((await ownerCommands(paths.home, signal, worker)) === "leave") {
    await worker.leave();
    process.stderr.write("left the site\n");
  } else {
    await worker.stop();
    process.stderr.write("stopped\n");
  }
  await rm(f.run, { force: true });
}
