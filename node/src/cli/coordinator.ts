/** `sharedllm coordinator start`: a coordinator on its own, for nodes on other machines to join. */
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Command, Option } from "commander";
import { pino } from "pino";
import { writeFileAtomic } from "../lock.js";
import { resolvePaths } from "../paths.js";
import { addListenOptions, address, addSettlementOptions, type ListenArgs, type SettlementArgs, wholeNumber } from "./args.js";
import { coordinatorAccount, runCoordinator } from "./coordinatorRun.js";
import { shutdownSignal } from "./shutdown.js";

export function coordinatorCommand(): Command {
  const cmd = new Command("coordinator").description("run a coordinator that nodes join");
  const start = cmd
    .command("start")
    .description("start the coordinator in the foreground; prints the command that joins a node to it")
    .addOption(new Option("--port <port>", "port (0 = any free port)").default(8787).argParser(wholeNumber))
    .option("--host <host>", "address to listen on (0.0.0.0 for nodes on the LAN: give it --tls-cert/--tls-key)", "127.0.0.1")
    .addOption(new Option("--database-url <url>", "PostgreSQL instead of embedded PGlite").env("DATABASE_URL"))
    .option("--verbose", "log at info level")
    .option("--chain-rpc-url <url>", "JSON-RPC URL of the chain with the CreditLedger (enables credits)")
    .addOption(new Option("--ledger <address>", "CreditLedger address on that chain").argParser(address));
  addListenOptions(addSettlementOptions(start)).action(
    async (
      o: {
        port: number;
        host: string;
        databaseUrl?: string;
        verbose?: boolean;
        chainRpcUrl?: string;
        ledger?: `0x${string}`;
      } & SettlementArgs &
        ListenArgs,
    ) => {
      if (Boolean(o.chainRpcUrl) !== Boolean(o.ledger)) throw new Error("credits need both --chain-rpc-url and --ledger");
      const signal = shutdownSignal();
      const { home } = resolvePaths();
      await mkdir(home, { recursive: true });
      const logger = pino({ level: o.verbose ? "info" : "warn" }, pino.destination(2));
      const ledger =
        o.chainRpcUrl && o.ledger
          ? {
              chain: { rpcUrl: o.chainRpcUrl, ledger: o.ledger, account: await coordinatorAccount(home) },
              settlement: { maxAgeMs: o.settleAfter * 1000, batchSize: o.batchSize },
            }
          : undefined;
      const { coordinator, joinToken, apiKey, selfSignedCert } = await runCoordinator({
        home,
        host: o.host,
        port: o.port,
        databaseUrl: o.databaseUrl,
        logger,
        ledger,
        listen: o,
      });
      const runFile = join(home, "coordinator.json");
      await writeFileAtomic(runFile, `${JSON.stringify({ url: coordinator.url, apiKey, pid: process.pid }, null, 2)}\n`, 0o600);
      process.stdout.write(
        [
          `coordinator: ${coordinator.url}/v1 (OpenAI-compatible)`,
          `API key:     ${apiKey}`,
          "join a node (on the node's machine):",
          `  sharedllm node start --coordinator ${coordinator.url} --token ${joinToken}${selfSignedCert ? ` --coordinator-ca ${selfSignedCert}` : ""}`,
          ...(selfSignedCert ? [`  (the certificate is self-signed: copy ${selfSignedCert} to the node)`] : []),
          ...(coordinator.ledger
            ? [
                `credits:     CreditLedger ${coordinator.ledger.chain.ledger}; this coordinator settles as ${coordinator.ledger.chain.coordinator} (it needs COORDINATOR_ROLE and gas)`,
              ]
            : []),
          "",
        ].join("\n"),
      );
      await new Promise<void>((r) => signal.addEventListener("abort", () => r(), { once: true }));
      await coordinator.close();
      await rm(runFile, { force: true });
    },
  );
  return cmd;
}
