/**
 * `sharedllm site`: an institution in two commands. `site init` on one machine runs the site's
 * coordinator and prints the join command; `site join` on every other machine enrols it and runs
 * a site daemon, which finds its peers on the LAN and clusters with the near ones by itself.
 * `site scan` probes a range where multicast is dropped; `site status` shows the site.
 */
import { spawn, spawnSync } from "node:child_process";
import dgram from "node:dgram";
import { mkdir, open, rm } from "node:fs/promises";
import { homedir, networkInterfaces } from "node:os";
import { join } from "node:path";
import {
  expandCidr,
  loadNodeIdentity,
  RegistrationRefused,
  registerNode,
  resolvePaths,
  SharedLLMError,
  startSiteDaemon,
  terminalProgress,
  writeFileAtomic,
} from "@sharedllm/node";
import type { NetworkResponse } from "@sharedllm/protocol";
import { DISCOVERY_PORT, NonceCache, openBeacon, sealBeacon, siteBeaconKey } from "@sharedllm/protocol/node";
import { Command, InvalidArgumentError, Option } from "commander";
import {
  addCoordinatorOptions,
  addListenOptions,
  type CoordinatorArgs,
  commandLogger,
  type ListenArgs,
  positiveInt,
  slotCount,
} from "./args.js";
import { coordinatorAccount, hostCoordinator } from "./hostCoordinator.js";
import { checkUrl, coordinatorCaOption, files, type NodeConfig, readCoordinatorCa, readJson, recordRun, runningNode } from "./node.js";
import { addOwnerOptions, type OwnerArgs, ownerCommands, ownerSettings } from "./ownerOptions.js";
import { shutdownSignal } from "./shutdown.js";

/** This machine's LAN address, for the join command others run. */
function lanAddress(): string {
  const all = Object.values(networkInterfaces()).flat();
  return all.find((a) => a && a.family === "IPv4" && !a.internal)?.address ?? "127.0.0.1";
}

async function enrol(home: string, url: string, token: string, ca?: string): Promise<{ nodeId: string; config: NodeConfig }> {
  const config: NodeConfig = { coordinatorUrl: checkUrl(url), joinToken: token, ...(ca && { coordinatorCa: ca }) };
  const identity = await loadNodeIdentity(home);
  if (!identity) throw new SharedLLMError("config", `could not create the node key in ${home}`);
  await registerNode({ ...config, account: identity.account }).catch((err: Error) => {
    if (err instanceof RegistrationRefused)
      throw new SharedLLMError("refused", `${config.coordinatorUrl} refused this machine: ${err.message} (check --token)`);
    if (err instanceof SharedLLMError) throw err;
    throw new SharedLLMError("unreachable", `cannot reach ${config.coordinatorUrl}: ${err.message}`, { cause: err });
  });
  await mkdir(home, { recursive: true });
  await writeFileAtomic(files(home).config, `${JSON.stringify(config, null, 2)}\n`, 0o600);
  return { nodeId: identity.nodeId, config };
}

export function siteCommand(): Command {
  const cmd = new Command("site").description("set up an institution: one coordinator, every other machine joins and clusters by itself");

  const init = addCoordinatorOptions(
    cmd
      .command("init")
      .description("run this site's coordinator (creating the site on first run) and print the command that joins a machine"),
    { portHelp: "coordinator port", host: "0.0.0.0", hostHelp: "address to listen on (beyond loopback: give it --tls-cert/--tls-key)" },
  );
  addListenOptions(init).action(async (o: CoordinatorArgs & ListenArgs) => {
    const signal = shutdownSignal();
    const { home } = resolvePaths();
    await mkdir(home, { recursive: true });
    await coordinatorAccount(home);
    const logger = commandLogger(o.verbose);
    await hostCoordinator({
      home,
      host: o.host,
      port: o.port,
      databaseUrl: o.databaseUrl,
      logger,
      listen: o,
      signal,
      runFile: join(home, "site.json"),
      ready: ({ coordinator, joinToken, apiKey, selfSignedCert }) => {
        const listening = new URL(coordinator.url);
        listening.hostname = o.host === "0.0.0.0" ? lanAddress() : o.host;
        const url = listening.origin;
        return {
          record: { coordinatorUrl: url, pid: process.pid },
          banner: [
            `site coordinator: ${url}/v1 (OpenAI-compatible)`,
            `API key:          ${apiKey}`,
            "join each machine of the site (run on that machine):",
            `  sharedllm site join ${url} --token ${joinToken}${selfSignedCert ? ` --coordinator-ca ${selfSignedCert}` : ""}`,
            ...(selfSignedCert ? [`  (the certificate is self-signed: copy ${selfSignedCert} to each machine)`] : []),
          ],
        };
      },
    });
  });

  const join_ = cmd
    .command("join")
    .description("enrol this machine in a site and run its daemon (it finds its LAN peers and clusters with them)")
    .argument("<coordinator-url>", "the site's coordinator, as site init printed it")
    .option("--token <token>", "the site's join token (required the first time; then read from this machine's 0600 config)")
    .addOption(coordinatorCaOption())
    .option("--model <source>", "model to serve", "default")
    .addOption(new Option("--slots <n>", "parallel requests").default(2).argParser(slotCount));
  addOwnerOptions(join_)
    .option("--scan <cidr...>", "also probe these ranges for peers (networks that drop multicast)")
    .option("--no-multicast", "do not use multicast beacons")
    .option("--broadcast <address>", "broadcast address for beacons, e.g. 192.168.1.255")
    .addOption(
      new Option("--cluster-rtt <ms>", "peers whose round trip (the fastest of recent samples) is under this cluster together")
        .default(2)
        .argParser((v) => {
          const n = Number(v);
          if (!(n > 0 && n < 1000)) throw new InvalidArgumentError("expected milliseconds, e.g. 2");
          return n;
        }),
    )
    .option("--background", "run the daemon in the background (log in $SHAREDLLM_HOME/logs/site.log)")
    .option("--service", "install and start it as a systemd user service")
    .option("--verbose", "log at info level")
    .action(
      async (
        url: string,
        o: {
          token?: string;
          coordinatorCa?: string;
          model: string;
          slots: number;
          scan?: string[];
          multicast: boolean;
          broadcast?: string;
          clusterRtt: number;
          background?: boolean;
          service?: boolean;
          verbose?: boolean;
        } & OwnerArgs,
      ) => {
        const paths = resolvePaths();
        const owner = ownerSettings(o);
        const scanTargets = (o.scan ?? []).flatMap(expandCidr);
        const running = await runningNode(paths.home);
        if (running) {
          if (running.coordinatorUrl === checkUrl(url)) {
            process.stdout.write(`already joined: node ${running.nodeId} runs for ${running.coordinatorUrl} (pid ${running.pid})\n`);
            return;
          }
          throw new SharedLLMError(
            "busy",
            `a node daemon already runs for ${running.coordinatorUrl} here; stop it first (sharedllm node leave)`,
          );
        }
        const saved = await readJson<NodeConfig>(files(paths.home).config);
        const known = saved?.coordinatorUrl === checkUrl(url) ? saved : undefined;
        const token = o.token ?? known?.joinToken;
        if (!token) {
          join_.error(
            "error: required option '--token <token>' not specified (a machine that joined this site before reads it from its config)",
            {
              exitCode: 2,
              code: "commander.missingMandatoryOptionValue",
            },
          );
        }
        const ca = (await readCoordinatorCa(o.coordinatorCa)) ?? known?.coordinatorCa;
        const { nodeId, config } = await enrol(paths.home, url, token as string, ca);
        // the daemon reads the join token from the config enrol wrote (0600), never from its command line
        const rest = daemonArgs(process.argv.slice(process.argv.indexOf("join") + 1));
        if (o.service) return installService(paths.home, rest);
        if (o.background) {
          await mkdir(join(paths.home, "logs"), { recursive: true });
          const log = await open(join(paths.home, "logs", "site.log"), "a");
          const child = spawn(process.execPath, [process.argv[1] as string, "site", "join", ...rest], {
            detached: true,
            stdio: ["ignore", log.fd, log.fd],
            env: process.env,
          });
          child.unref();
          process.stdout.write(
            `node ${nodeId} joined ${config.coordinatorUrl}; the daemon runs in the background (pid ${child.pid}, log ${join(paths.home, "logs", "site.log")})\n`,
          );
          return;
        }
        const signal = shutdownSignal();
        const logger = commandLogger(o.verbose);
        const daemon = await startSiteDaemon({
          paths,
          ...config,
          ...owner,
          model: o.model,
          slots: o.slots,
          scanTargets,
          group: o.multicast ? undefined : null,
          broadcast: o.broadcast,
          thresholdMs: o.clusterRtt,
          logger,
          progress: terminalProgress(),
          signal,
        });
        await recordRun(paths.home, nodeId, config.coordinatorUrl);
        process.stdout.write(`node ${nodeId} joined ${config.coordinatorUrl} and looks for its LAN peers\n`);
        if ((await ownerCommands(paths.home, signal, daemon)) === "leave") {
          await daemon.leave();
          process.stderr.write("left the site\n");
        } else {
          await daemon.stop();
          process.stderr.write("stopped\n");
        }
        await rm(files(paths.home).run, { force: true });
      },
    );

  cmd
    .command("scan")
    .description("probe a range for this site's daemons (where multicast is dropped)")
    .argument("<cidr>", "IPv4 range, e.g. 192.168.1.0/24")
    .option("--token <token>", "the site's join token (default: the one this machine joined with)")
    .addOption(new Option("--wait <ms>", "how long to wait for answers").default(2000).argParser(positiveInt))
    .action(async (cidr: string, o: { token?: string; wait: number }) => {
      const { home } = resolvePaths();
      const token =
        o.token ??
        (await readJson<NodeConfig>(files(home).config))?.joinToken ??
        (await readJson<{ joinToken: string }>(join(home, "secrets.json")))?.joinToken;
      if (!token) throw new SharedLLMError("config", "no site known here: pass --token <join token>, or run it on a machine that joined");
      const targets = expandCidr(cidr);
      const key = siteBeaconKey(token);
      const me = (await loadNodeIdentity(home))?.nodeId as string;
      const socket = dgram.createSocket("udp4");
      await new Promise<void>((r) => socket.bind(0, r));
      const nonces = new NonceCache();
      const sent = new Map<string, number>();
      const found = new Map<string, { address: string; rttMs: number; memoryBytes?: number; role?: string }>();
      socket.on("message", (msg, rinfo) => {
        const b = openBeacon(key, msg, nonces);
        if (!b.ok || b.beacon.kind !== "pong" || !b.beacon.echo) return;
        const at = sent.get(b.beacon.echo);
        if (at === undefined || found.has(b.beacon.node)) return;
        found.set(b.beacon.node, {
          address: rinfo.address,
          rttMs: performance.now() - at,
          memoryBytes: b.beacon.memoryBytes,
          role: b.beacon.role,
        });
      });
      for (const address of targets) {
        const packet = sealBeacon(key, { kind: "probe", node: me });
        sent.set((JSON.parse(packet.toString().split("\n")[0] as string) as { nonce: string }).nonce, performance.now());
        socket.send(packet, DISCOVERY_PORT, address);
      }
      await new Promise((r) => setTimeout(r, o.wait));
      socket.close();
      if (!found.size) {
        process.stdout.write(`no daemon of this site answered in ${cidr}\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`${found.size} daemon(s) of this site in ${cidr}:\n`);
      for (const [node, f] of [...found].sort((a, b) => a[1].address.localeCompare(b[1].address))) {
        process.stdout.write(
          `  ${f.address.padEnd(15)} ${node}  ${f.role ?? "?"}  ${((f.memoryBytes ?? 0) / 2 ** 30).toFixed(1)} GiB  ${f.rttMs.toFixed(2)} ms\n`,
        );
      }
    });

  cmd
    .command("status")
    .description("show the site as its coordinator sees it: nodes, roles, clusters and their splits")
    .option("--coordinator <url>", "the site's coordinator (default: the one this machine joined)")
    .action(async (o: { coordinator?: string }) => {
      const { home } = resolvePaths();
      const url =
        o.coordinator ??
        (await readJson<NodeConfig>(files(home).config))?.coordinatorUrl ??
        (await readJson<{ coordinatorUrl: string }>(join(home, "site.json")))?.coordinatorUrl;
      if (!url) throw new SharedLLMError("config", "no site known here: pass --coordinator <url>");
      const res = await fetch(`${checkUrl(url)}/v1/network`).catch((err: Error) => {
        throw new SharedLLMError("unreachable", `cannot reach ${url}: ${err.message}`, { cause: err });
      });
      const net = (await res.json()) as NetworkResponse;
      for (const n of net.nodes.filter((x) => x.status === "online")) {
        const memory = n.capacity ? `  ${(n.capacity.memoryBytes / 2 ** 30).toFixed(1)} GiB` : "";
        process.stdout.write(`${n.id}  ${n.role.padEnd(6)}  ${n.models.join(",") || "-"}${memory}\n`);
        for (const m of n.cluster ?? []) {
          const link = m.rttMs === undefined ? "" : `  link ${m.rttMs.toFixed(2)} ms, ${(m.throughputMiBps ?? 0).toFixed(0)} MiB/s`;
          process.stdout.write(
            `    layers ${m.firstLayer}-${m.firstLayer + m.layerCount - 1} on ${m.nodeId}  speed ${m.speed ?? "?"}${link}\n`,
          );
        }
      }
    });
  return cmd;
}

/** The arguments `site join` passes on to its background daemon or service: no join token, no --background/--service. */
export function daemonArgs(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === "--token") i++;
    else if (!a.startsWith("--token=") && a !== "--background" && a !== "--service") out.push(a);
  }
  return out;
}

/** The systemd user unit that runs `site join` with these arguments (which hold no secret). */
export function serviceUnit(home: string, args: string[]): string {
  const quoted = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
  return [
    "[Unit]",
    "Description=SharedLLM site daemon",
    "After=network-online.target",
    "",
    "[Service]",
    `Environment=SHAREDLLM_HOME=${home}`,
    `ExecStart=${process.execPath} ${quoted(process.argv[1] as string)} site join ${args.map(quoted).join(" ")}`,
    "Restart=on-failure",
    "",
    "[Install]",
    "WantedBy=default.target",
    "",
  ].join("\n");
}

function installService(home: string, args: string[]) {
  if (spawnSync("systemctl", ["--user", "--version"], { stdio: "ignore" }).status !== 0) {
    throw new SharedLLMError("system", "systemd user services are not available here; use --background or run it in the foreground");
  }
  const unit = join(homedir(), ".config", "systemd", "user", "sharedllm-site.service");
  return mkdir(join(homedir(), ".config", "systemd", "user"), { recursive: true })
    .then(() => writeFileAtomic(unit, serviceUnit(home, args), 0o600))
    .then(() => {
      const r = spawnSync("systemctl", ["--user", "enable", "--now", "sharedllm-site.service"], { encoding: "utf8" });
      if (r.status !== 0) throw new SharedLLMError("system", `systemctl could not start the service: ${r.stderr.trim()}`);
      process.stdout.write(`installed and started ${unit}\n`);
    });
}
