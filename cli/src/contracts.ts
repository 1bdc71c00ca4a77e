/**
 * `sharedllm contracts deploy`: deploys CreditLedger and FederationRegistry to a chain (a testnet
 * such as Sepolia or Base Sepolia) and records the deployment in contracts/deployments/<chainId>.json.
 * The deployer key comes from SHAREDLLM_DEPLOYER_KEY, never from a flag (shell history, ps).
 */
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { DEPLOYMENTS_DIR, deployContracts } from "@sharedllm/contracts";
import { SharedLLMError } from "@sharedllm/node";
import { Command, Option } from "commander";
import { createPublicClient, type Hex, http, parseGwei } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { address } from "./args.js";
import { chainClients } from "./chain.js";

export function contractsCommand(): Command {
  const cmd = new Command("contracts").description("deploy the SharedLLM contracts to a chain");
  cmd
    .command("deploy")
    .description(
      "deploy CreditLedger and FederationRegistry with the key in SHAREDLLM_DEPLOYER_KEY; records contracts/deployments/<chainId>.json",
    )
    .requiredOption("--rpc-url <url>", "JSON-RPC URL of the chain")
    .addOption(
      new Option("--coordinator <address...>", "coordinator accounts to grant COORDINATOR_ROLE").argParser(
        (v, prev: `0x${string}`[] = []) => [...prev, address(v)],
      ),
    )
    .option("--price-gwei <gwei>", "price of one credit in gwei of the native coin", "1")
    .option("--withdrawal-notice <seconds>", "how long a withdrawal waits", "86400")
    .option(
      "--max-batch-spend <credits>",
      "most credits of user spend one settlement may move (bounds a stolen coordinator key)",
      "1000000000",
    )
    .option("--timelock-delay <seconds>", "how long every governance change waits in the timelock", "172800")
    .option("--out <dir>", "where the deployment record goes", DEPLOYMENTS_DIR)
    .action(
      async (o: {
        rpcUrl: string;
        coordinator?: `0x${string}`[];
        priceGwei: string;
        withdrawalNotice: string;
        maxBatchSpend: string;
        timelockDelay: string;
        out: string;
      }) => {
        const key = process.env.SHAREDLLM_DEPLOYER_KEY;
        if (!key || !/^0x[0-9a-fA-F]{64}$/.test(key))
          throw new SharedLLMError("config", "set SHAREDLLM_DEPLOYER_KEY to the deployer's private key (0x and 64 hex digits)");
        const chainId = await createPublicClient({ transport: http(o.rpcUrl) })
          .getChainId()
          .catch((err: Error) => {
            throw new SharedLLMError("unreachable", `the chain at ${o.rpcUrl} does not answer: ${err.message}`, { cause: err });
          });
        const { publicClient, wallet } = chainClients(o.rpcUrl, chainId, privateKeyToAccount(key as Hex));
        process.stderr.write(`deploying to chain ${chainId} as ${wallet?.account.address}...\n`);
        const deployment = await deployContracts({
          publicClient,
          wallet: wallet as NonNullable<typeof wallet>,
          weiPerCredit: parseGwei(o.priceGwei),
          withdrawalNoticeSeconds: BigInt(o.withdrawalNotice),
          maxBatchSpend: BigInt(o.maxBatchSpend),
          timelockDelaySeconds: BigInt(o.timelockDelay),
          coordinators: o.coordinator,
        });
        const file = join(o.out, `${chainId}.json`);
        await mkdir(dirname(file), { recursive: true });
        await writeFile(file, `${JSON.stringify(deployment, null, 2)}\n`);
        process.stdout.write(
          [
            `CreditLedger:       ${deployment.contracts.CreditLedger}`,
            `FederationRegistry: ${deployment.contracts.FederationRegistry}`,
            `Governance:         ${deployment.contracts.Governance} (TimelockController, ${o.timelockDelay} s; ${deployment.deployer} proposes and executes)`,
            `recorded in ${file}`,
            `run a coordinator on it: sharedllm coordinator start --chain-rpc-url ${o.rpcUrl} --ledger ${deployment.contracts.CreditLedger}`,
            "",
          ].join("\n"),
        );
      },
    );
  return cmd;
}
