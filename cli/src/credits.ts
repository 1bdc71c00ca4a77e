/**
 * `sharedllm credits [claim]`: what this node earned at its coordinator (pending, settled,
 * claimed, claimable) and its credit balance on chain; `claim` sends the claim transaction with
 * the Merkle proof the coordinator serves, signed by the node's own key.
 */
import { join } from "node:path";
import { CreditLedger } from "@sharedllm/contracts";
import { loadNodeIdentity, type NodeIdentity, resolvePaths, SharedLLMError } from "@sharedllm/node";
import { type EarningsResponse, KEY_POLICIES, type KeyPolicy, type LedgerResponse, type NewApiKeyResponse } from "@sharedllm/protocol";
import { Command, Option } from "commander";
import { chainClients, signInWithEthereum } from "./chain.js";
import { checkUrl, files, readJson } from "./node.js";

/** The coordinator from --coordinator, else the one this home's node or `up` uses. */
async function coordinatorUrl(home: string, flag?: string): Promise<string> {
  const url =
    flag ??
    (await readJson<{ coordinatorUrl: string }>(files(home).config))?.coordinatorUrl ??
    (await readJson<{ coordinatorUrl: string }>(join(home, "up.json")))?.coordinatorUrl;
  if (!url) throw new SharedLLMError("config", "no coordinator known here: pass --coordinator <url>");
  return checkUrl(url);
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(15_000) }).catch((err: Error) => {
    throw new SharedLLMError("unreachable", `cannot reach ${new URL(url).origin}: ${err.message}`, { cause: err });
  });
  const body = (await res.json().catch(() => ({}))) as T & { error?: { message: string } };
  if (res.status === 404 && url.endsWith("/v1/ledger"))
    throw new SharedLLMError("refused", `${new URL(url).origin} runs without credits (no ledger)`);
  if (!res.ok) throw new SharedLLMError("refused", body.error?.message ?? `${url} answered ${res.status}`);
  return body;
}

async function context(o: { coordinator?: string; chainRpcUrl?: string }) {
  const { home } = resolvePaths();
  const identity = await loadNodeIdentity(home, { create: false });
  if (!identity) throw new SharedLLMError("config", `this machine has no node key in ${home}; run sharedllm node init first`);
  const url = await coordinatorUrl(home, o.coordinator);
  const ledger = await getJson<LedgerResponse>(`${url}/v1/ledger`);
  const rpcUrl = o.chainRpcUrl ?? ledger.rpcUrl;
  if (!rpcUrl) throw new SharedLLMError("config", "the coordinator does not say which chain RPC to use: pass --chain-rpc-url");
  const address = identity.account.address;
  const earnings = await getJson<EarningsResponse>(`${url}/v1/earnings/${address}`);
  const clients = chainClients(rpcUrl, ledger.chainId, identity.account);
  return { identity: identity as NodeIdentity, url, ledger, earnings, address, ...clients };
}

export function creditsCommand(): Command {
  const options = (c: Command) =>
    c
      .option("--coordinator <url>", "the coordinator (default: the one this node uses)")
      .option("--chain-rpc-url <url>", "JSON-RPC URL of the chain (default: the one the coordinator names)");
  const cmd = options(
    new Command("credits").description("show what this node earned, what is settled and claimable, and its balance on chain"),
  );
  cmd.action(async (o: { coordinator?: string; chainRpcUrl?: string }) => {
    const c = await context(o);
    const balance = await c.publicClient.readContract({
      address: c.ledger.ledger,
      abi: CreditLedger.abi,
      functionName: "credits",
      args: [c.address],
    });
    process.stdout.write(
      [
        `node ${c.address} at ${c.url} (ledger ${c.ledger.ledger}, chain ${c.ledger.chainId})`,
        `  earned:     ${c.earnings.earned} credits`,
        `  pending:    ${c.earnings.pending} (not yet settled on chain)`,
        `  settled:    ${c.earnings.settled}`,
        `  claimed:    ${c.earnings.claimed}`,
        `  claimable:  ${c.earnings.claimable}${BigInt(c.earnings.claimable) > 0n ? " (sharedllm credits claim)" : ""}`,
        `  on chain:   ${balance} credits`,
        "",
      ].join("\n"),
    );
  });
  options(cmd.command("claim").description("claim the settled, unclaimed earnings onto this node's on-chain balance"))
    .option("--deposit", "then deposit them into escrow for the coordinator, to pay for this wallet's own API use")
    .action(async (_o: unknown, command: Command) => {
      // the flags may land on `credits` or on `claim`
      const flags = command.optsWithGlobals<{ coordinator?: string; chainRpcUrl?: string; deposit?: boolean }>();
      const c = await context(flags);
      if (!c.earnings.claim || BigInt(c.earnings.claimable) === 0n) {
        throw new SharedLLMError(
          "refused",
          `nothing to claim yet: ${c.earnings.pending} credits wait for the next settlement, ${c.earnings.claimed} were claimed`,
        );
      }
      const { cumulative, proof } = c.earnings.claim;
      const wallet = c.wallet as NonNullable<typeof c.wallet>;
      const { request } = await c.publicClient.simulateContract({
        account: wallet.account,
        address: c.ledger.ledger,
        abi: CreditLedger.abi,
        functionName: "claim",
        args: [c.ledger.coordinator, c.address, BigInt(cumulative), proof],
      });
      process.stderr.write("sending the claim...\n");
      const hash = await wallet.writeContract(request);
      const receipt = await c.publicClient.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new SharedLLMError("refused", `the claim transaction ${hash} reverted`);
      process.stdout.write(`claimed ${c.earnings.claimable} credits (tx ${hash})\n`);
      if (flags.deposit) {
        const deposit = await wallet.writeContract({
          address: c.ledger.ledger,
          abi: CreditLedger.abi,
          functionName: "deposit",
          args: [c.ledger.coordinator, BigInt(c.earnings.claimable)],
        });
        if ((await c.publicClient.waitForTransactionReceipt({ hash: deposit })).status !== "success")
          throw new SharedLLMError("refused", `the deposit ${deposit} reverted`);
        process.stdout.write(`deposited ${c.earnings.claimable} credits into escrow for ${c.ledger.coordinator} (tx ${deposit})\n`);
      }
      const balance = await c.publicClient.readContract({
        address: c.ledger.ledger,
        abi: CreditLedger.abi,
        functionName: "credits",
        args: [c.address],
      });
      process.stdout.write(`on-chain balance ${balance} credits\n`);
    });
  options(cmd.command("api-key").description("sign in with this node's key and create an API key that spends its credits"))
    .option("--name <name>", "a label for the key", "node")
    .addOption(
      new Option(
        "--policy <policy>",
        "where its jobs may run: any, site_only (never on a peer site), own_nodes (only on this wallet's nodes)",
      )
        .choices(KEY_POLICIES)
        .default("any"),
    )
    .action(async (_o: unknown, command: Command) => {
      const flags = command.optsWithGlobals<{ coordinator?: string; name: string; policy: KeyPolicy }>();
      const { home } = resolvePaths();
      const identity = await loadNodeIdentity(home, { create: false });
      if (!identity) throw new SharedLLMError("config", `this machine has no node key in ${home}; run sharedllm node init first`);
      const url = await coordinatorUrl(home, flags.coordinator);
      const { chainId } = await getJson<LedgerResponse>(`${url}/v1/ledger`);
      const session = await signInWithEthereum(url, identity.account, chainId);
      const res = await fetch(`${url}/v1/keys`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${session}` },
        body: JSON.stringify({ name: flags.name, policy: flags.policy }),
      });
      const body = (await res.json()) as Partial<NewApiKeyResponse> & { error?: { message: string } };
      if (!body.key) throw new SharedLLMError("refused", body.error?.message ?? `creating the key failed (${res.status})`);
      process.stdout.write(`${body.key}\n`);
      process.stderr.write(`(shown once; it spends the credits ${identity.account.address} has in escrow at ${url})\n`);
    });
  return cmd;
}
