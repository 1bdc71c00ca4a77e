/** `sharedllm coordinator start`: a coordinator on its own, for nodes on other machines to join. */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { resolvePaths, SharedLLMError } from "@sharedllm/node";
import { Command, Option } from "commander";
import {
  type AuditArgs,
  addAuditOptions,
  addCoordinatorOptions,
  addFederationOptions,
  addIndexerOptions,
  addListenOptions,
  address,
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
} from "./args.js";
import { registryOf } from "./federation.js";
import { coordinatorAccount, coordinatorPrivateKey, hostCoordinator } from "./hostCoordinator.js";
import { shutdownSignal } from "./shutdown.js";

export function coordinatorCommand(): Command {
  const cmd = new Command("coordinator").description("run a coordinator that nodes join");
  const start = addCoordinatorOptions(
    cmd.command("start").description("start the coordinator in the foreground; prints the command that joins a node to it"),
    {
      portHelp: "port (0 = any free port)",
      host: "127.0.0.1",
      hostHelp: "address to listen on (0.0.0.0 for nodes on the LAN: give it --tls-cert/--tls-key)",
    },
  )
    .option("--chain-rpc-url <url>", "JSON-RPC URL of the chain with the CreditLedger (with --ledger) and FederationRegistry")
    .addOption(new Option("--ledger <address>", "CreditLedger address on that chain").argParser(address))
    .addOption(
      new Option(
        "--nats-url <url>",
        "run as one of several replicas of this coordinator (same home secrets, same --database-url): they reach each other's nodes over this NATS server (docs/replicas.md)",
      ).env("NATS_URL"),
    );
  addIndexerOptions(addFederationOptions(addListenOptions(addAuditOptions(addSettlementOptions(start))))).action(
    async (
      o: CoordinatorArgs & { chainRpcUrl?: string; ledger?: `0x${string}`; natsUrl?: string } & SettlementArgs &
        AuditArgs &
        ListenArgs &
        FederationArgs &
        IndexerArgs,
    ) => {
      if (o.ledger && !o.chainRpcUrl) throw new SharedLLMError("config", "credits need both --chain-rpc-url and --ledger");
      if (o.chainRpcUrl && !o.ledger && !o.federation)
        throw new SharedLLMError("config", "--chain-rpc-url is for credits (with --ledger) or federation (with --federation)");
      if (o.federation && !o.chainRpcUrl)
        throw new SharedLLMError("config", "federation needs --chain-rpc-url (the chain of FederationRegistry)");
      if (o.natsUrl && !o.databaseUrl)
        throw new SharedLLMError(
          "config",
          "replicas (--nats-url) share one PostgreSQL database: give --database-url (or DATABASE_URL) too",
        );
      const signal = shutdownSignal();
      const { home } = resolvePaths();
      await mkdir(home, { recursive: true });
      const logger = commandLogger(o.verbose);
      const ledger =
        o.chainRpcUrl && o.ledger
          ? {
              chain: { rpcUrl: o.chainRpcUrl, ledger: o.ledger, account: await coordinatorAccount(home) },
              settlement: settlementOptions(o),
              audits: auditOptions(o),
            }
          : undefined;
      // the registry (and the contracts' first block) as the flags, sharedllm up or the deployment record say
      const known =
        o.chainRpcUrl && (o.federation || o.index)
          ? await registryOf(home, { chainRpcUrl: o.chainRpcUrl, registry: o.federationRegistry }).catch((err: unknown) => {
              // no registry known here: the history of the ledger alone. A chain that does not answer
              // is no reason to index less (the history would start over once it does)
              if (o.federation || !(err instanceof SharedLLMError && err.code === "config")) throw err;
              return undefined;
            })
          : undefined;
      const federation =
        o.federation && o.chainRpcUrl && known
          ? {
              rpcUrl: o.chainRpcUrl,
              registry: known.registry,
              privateKey: await coordinatorPrivateKey(home),
              refreshMs: o.federationRefresh * 1000,
              read: registryReadOptions(o),
              forwarding: forwardingOptions(o),
            }
          : undefined;
      await hostCoordinator({
        home,
        host: o.host,
        port: o.port,
        databaseUrl: o.databaseUrl,
        replicas: o.natsUrl ? { natsUrl: o.natsUrl } : undefined,
        logger,
        ledger,
        federation,
        indexer: indexerSettings(o, { registry: known?.registry, startBlock: known?.startBlock }),
        listen: o,
        signal,
        runFile: join(home, "coordinator.json"),
        ready: ({ coordinator, joinToken, apiKey, selfSignedCert, contribute }) => ({
          record: { url: coordinator.url, apiKey, pid: process.pid },
          banner: [
            `coordinator: ${coordinator.url}/v1 (OpenAI-compatible)`,
            `API key:     ${apiKey}`,
            ...contribute,
            "join a node (on the node's machine):",
            `  sharedllm node start --coordinator ${coordinator.url} --token ${joinToken}${selfSignedCert ? ` --coordinator-ca ${selfSignedCert}` : ""}`,
            ...(selfSignedCert ? [`  (the certificate is self-signed: copy ${selfSignedCert} to the node)`] : []),
            ...(coordinator.ledger
              ? [
                  `credits:     CreditLedger ${coordinator.ledger.chain.ledger}; this coordinator settles as ${coordinator.ledger.chain.coordinator} (it needs COORDINATOR_ROLE and gas)`,
                ]
              : []),
          ],
        }),
      });
    },
  );
  return cmd;
}
