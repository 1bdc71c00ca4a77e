/**
 * `sharedllm up`: the whole system on one machine with embedded defaults:
 * a coordinator (PGlite under $SHAREDLLM_HOME/db) and one node serving the
 * default model, which also audits other nodes' jobs. Prints the URL, a dev API key and a curl line once ready, and
 * writes the same to $SHAREDLLM_HOME/up.json. Ctrl-C stops everything.
 */
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  freePort,
  loadNodeIdentity,
  type NodeIdentity,
  resolvePaths,
  SharedLLMError,
  startNodeDaemon,
  terminalProgress,
} from "@sharedllm/node";
import { Command, Option } from "commander";
import {
  type AuditArgs,
  addAuditOptions,
  addCoordinatorOptions,
  addFederationOptions,
  addIndexerOptions,
  addListenOptions,
  addSettlementOptions,
  auditOptions,
  type CoordinatorArgs,
  commandLogger,
  type FederationArgs,
  forwardingOptions,
  type IndexerArgs,
  indexerSettings,
  type ListenArgs,
  registryReadOptions,
  type SettlementArgs,
  settlementOptions,
  slotCount,
  wholeNumber,
} from "./args.js";
import { deployDevContracts, startDevChain } from "./chain.js";
import { coordinatorAccount, coordinatorPrivateKey, type HostOptions, hostCoordinator } from "./hostCoordinator.js";
import { shutdownSignal } from "./shutdown.js";

export interface UpFile {
  coordinatorUrl: string;
  apiKey: string;
  models: string[];
  /** the local node's own llama-server, for debugging and benchmarks, and its API key */
  engineUrl: string;
  engineApiKey: string;
  /** the local dev chain and the contracts on it; absent with --no-chain */
  chainRpcUrl?: string;
  contracts?: Record<string, string>;
  pid: number;
  startedAt: string;
}

export function upCommand(): Command {
  const cmd = addCoordinatorOptions(
    new Command("up").description("run a coordinator and a local node with the default model on this machine"),
    { portHelp: "coordinator port (0 = any free port)", host: "127.0.0.1", hostHelp: "address to listen on" },
  )
    .option("--model <source>", "model to serve: an id in the store, 'default', hf:..., or a .gguf path", "default")
    .addOption(new Option("--slots <n>", "parallel requests on the node").default(2).argParser(slotCount))
    .option("--engine-args <args>", 'extra llama-server arguments, space-separated (e.g. "--poll 0")')
    .option("--no-chain", "run without the local dev chain: no credits, every key is free")
    .addOption(new Option("--chain-port <port>", "port of the local dev chain (0 = any free port)").default(8545).argParser(wholeNumber));
  return addIndexerOptions(addFederationOptions(addListenOptions(addAuditOptions(addSettlementOptions(cmd))))).action(
    async (
      o: CoordinatorArgs & { model: string; slots: number; engineArgs?: string; chain: boolean; chainPort: number } & SettlementArgs &
        AuditArgs &
        ListenArgs &
        FederationArgs &
        IndexerArgs,
    ) => {
      const signal = shutdownSignal();
      const paths = resolvePaths();
      await mkdir(paths.home, { recursive: true });
      const upFile = join(paths.home, "up.json");
      // a stale up.json (from a killed run) must not be read while the dev chain starts
      await rm(upFile, { force: true });
      const logger = commandLogger(o.verbose);
      let chain: { rpcUrl: string; contracts: Record<string, string>; stop: () => Promise<void> } | undefined;
      let ledger: HostOptions["ledger"];
      let federation: HostOptions["federation"];
      let indexer: HostOptions["indexer"];
      if (o.federation && !o.chain) throw new SharedLLMError("config", "--federation needs the chain: leave out --no-chain");
      if (o.chain) {
        process.stderr.write("starting the local dev chain and deploying the contracts...\n");
        const dev = await startDevChain({ home: paths.home, host: "127.0.0.1", port: o.chainPort || (await freePort()) });
        try {
          const coordinatorKey = await coordinatorAccount(paths.home);
          const node = (await loadNodeIdentity(paths.home)) as NodeIdentity;
          const deployment = await deployDevContracts(dev.rpcUrl, coordinatorKey.address, [node.account.address]);
          chain = { rpcUrl: dev.rpcUrl, contracts: deployment.contracts, stop: () => dev.supervisor.stop() };
          indexer = indexerSettings(o, {
            registry: o.federationRegistry ?? deployment.contracts.FederationRegistry,
            startBlock: deployment.startBlock,
          });
          ledger = {
            chain: { rpcUrl: dev.rpcUrl, ledger: deployment.contracts.CreditLedger, account: coordinatorKey },
            settlement: settlementOptions(o),
            // the local node audits the jobs of nodes that join (it is this machine's own)
            audits: auditOptions(o, [node.account.address]),
          };
          if (o.federation) {
            federation = {
              rpcUrl: dev.rpcUrl,
              registry: o.federationRegistry ?? deployment.contracts.FederationRegistry,
              privateKey: await coordinatorPrivateKey(paths.home),
              refreshMs: o.federationRefresh * 1000,
              read: registryReadOptions(o),
              forwarding: forwardingOptions(o),
            };
          }
        } catch (err) {
          await dev.supervisor.stop();
          throw err;
        }
      }
      await hostCoordinator({
        home: paths.home,
        host: o.host,
        port: o.port,
        databaseUrl: o.databaseUrl,
        logger,
        ledger,
        federation,
        indexer,
        listen: o,
        signal,
        runFile: upFile,
        stopBefore: chain?.stop,
        ready: async ({ coordinator, joinToken, apiKey, cert, contribute }) => {
          const node = await startNodeDaemon({
            paths,
            coordinatorUrl: coordinator.url,
            coordinatorCa: cert,
            dialControl: coordinator.dialLocal,
            joinToken,
            model: o.model,
            slots: o.slots,
            engineArgs: o.engineArgs?.split(/\s+/).filter(Boolean),
            // the operator's own node: the one the coordinator can trust to audit the others
            auditor: true,
            logger,
            progress: terminalProgress(),
            signal,
          });
          const models = [...new Set(coordinator.fleet.list().flatMap((n) => [...n.models.keys()]))];
          const up: UpFile = {
            coordinatorUrl: coordinator.url,
            apiKey,
            models,
            engineUrl: node.llama.url,
            engineApiKey: node.llama.apiKey,
            ...(chain && { chainRpcUrl: chain.rpcUrl, contracts: chain.contracts }),
            pid: process.pid,
            startedAt: new Date().toISOString(),
          };
          return {
            record: up,
            stop: () => node.stop(),
            banner: [
              "",
              `SharedLLM is up: ${coordinator.url}/v1 (OpenAI-compatible)`,
              `  portal:  ${coordinator.url}/ (wallet, credits, keys, earnings, network map, playground)`,
              ...contribute,
              `  models:  ${models.join(", ")}`,
              `  API key: ${apiKey}`,
              ...(chain ? [`  chain:   ${chain.rpcUrl} (local dev chain), CreditLedger ${chain.contracts.CreditLedger}`] : []),
              "",
              "Try it:",
              `  curl ${coordinator.url}/v1/chat/completions -H "Authorization: Bearer ${apiKey}" -H "Content-Type: application/json" \\`,
              `    -d '{"model":"${models[0]}","messages":[{"role":"user","content":"Hello!"}]}'`,
              "",
              `(written to ${upFile}; Ctrl-C stops everything)`,
            ],
          };
        },
      });
    },
  );
}
