/**
 * `sharedllm federation ...`: this coordinator in FederationRegistry (docs/federation.md).
 * `register`, `renew`, `endorse`, `unendorse` send transactions signed by the coordinator's key
 * (`$SHAREDLLM_HOME/coordinator-key.json`, which needs gas); `admit` and `revoke` are
 * governance's, signed by the governor key in SHAREDLLM_GOVERNOR_KEY (on the dev chain, the
 * deployer's well-known key when it is unset); `peers` and `status` only read. The chain and the
 * registry come from the flags, else from `sharedllm up`'s record, else from the deployment
 * record of the chain.
 */
import { join } from "node:path";
import { DEPLOYMENTS_DIR, DEV_CHAIN_ID, DEV_DEPLOYER_KEY, type Deployment, FederationRegistry } from "@sharedllm/contracts";
import { resolvePaths, SharedLLMError } from "@sharedllm/node";
import { peerUrlProblem } from "@sharedllm/protocol";
import { Command, InvalidArgumentError, Option } from "commander";
import {
  type Account,
  type Address,
  BaseError,
  ContractFunctionRevertedError,
  createPublicClient,
  type Hex,
  http,
  type LocalAccount,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { address } from "./args.js";
import { chainClients } from "./chain.js";
import { coordinatorAccount } from "./hostCoordinator.js";
import { readJson } from "./node.js";
import type { UpFile } from "./up.js";

const STATUS = ["unregistered", "pending", "admitted", "revoked"] as const;

interface ChainArgs {
  chainRpcUrl?: string;
  registry?: Address;
}

const chainOptions = (c: Command) =>
  c
    .option("--chain-rpc-url <url>", "JSON-RPC URL of the chain (default: the dev chain of `sharedllm up` in this home)")
    .addOption(new Option("--registry <address>", "FederationRegistry address (default: the deployment's)").argParser(address));

/** The chain, its id and the registry: flags first, then up.json, then contracts/deployments/<chainId>.json. */
export async function registryOf(
  home: string,
  o: ChainArgs,
): Promise<{ rpcUrl: string; chainId: number; registry: Address; startBlock?: number }> {
  const up = await readJson<UpFile>(join(home, "up.json"));
  const rpcUrl = o.chainRpcUrl ?? up?.chainRpcUrl;
  if (!rpcUrl) throw new SharedLLMError("config", "no chain known here: pass --chain-rpc-url <url> (or run sharedllm up in this home)");
  const chainId = await createPublicClient({ transport: http(rpcUrl, { retryCount: 1, timeout: 10_000 }) })
    .getChainId()
    .catch((err: Error) => {
      throw new SharedLLMError("unreachable", `the chain at ${rpcUrl} does not answer: ${err.message}`, { cause: err });
    });
  const recorded = await readJson<Deployment>(join(DEPLOYMENTS_DIR, `${chainId}.json`));
  const registry =
    o.registry ??
    (up?.chainRpcUrl === rpcUrl ? (up.contracts?.FederationRegistry as Address | undefined) : undefined) ??
    recorded?.contracts.FederationRegistry;
  if (!registry)
    throw new SharedLLMError("config", `no FederationRegistry known for chain ${chainId}: pass --registry <address>`, {
      hint: `deployments are recorded in ${DEPLOYMENTS_DIR}/<chainId>.json by sharedllm contracts deploy`,
    });
  // the first block is known when the registry is the recorded deployment's
  const startBlock = registry.toLowerCase() === recorded?.contracts.FederationRegistry.toLowerCase() ? recorded?.startBlock : undefined;
  return { rpcUrl, chainId, registry, startBlock };
}

/** Why the registry refused a transaction, in words. */
function refusal(err: unknown, what: string): SharedLLMError {
  const reverted = err instanceof BaseError ? err.walk((e) => e instanceof ContractFunctionRevertedError) : undefined;
  const name = (reverted as ContractFunctionRevertedError | undefined)?.data?.errorName;
  const words: Record<string, string> = {
    KeyNotSender: "the public key is not the sender's",
    AlreadyRegistered: "this coordinator is already registered: use `sharedllm federation renew` for a new key id and valid-until",
    NotRegistered: "that coordinator is not registered",
    NotAdmitted: "only a coordinator that governance admitted may endorse peers",
    KeyExpired: "the valid-until must be in the future",
    KeyIdNotIncreasing: "a renewal needs a greater key id than the current one",
    AccessControlUnauthorizedAccount: "this key does not hold the registry's governor role (set SHAREDLLM_GOVERNOR_KEY)",
  };
  if (name) return new SharedLLMError("refused", `${what} was refused by the registry: ${words[name] ?? name}`, { cause: err });
  const message = err instanceof BaseError ? `${err.shortMessage} ${err.details ?? ""}` : String(err);
  if (/insufficient funds|enough funds/i.test(message)) {
    return new SharedLLMError("refused", `${what} failed: the sending account has no coins for gas`, {
      cause: err,
      hint: "send some of the chain's native coin to the address that signs (sharedllm federation status shows this coordinator's)",
    });
  }
  const details = err instanceof BaseError ? (err.details ?? err.shortMessage) : String(err);
  return new SharedLLMError("refused", `${what} failed: ${details}`, { cause: err });
}

async function send(
  c: { rpcUrl: string; chainId: number; registry: Address },
  account: Account,
  functionName: string,
  args: readonly unknown[],
  what: string,
): Promise<Hex> {
  const { publicClient, wallet } = chainClients(c.rpcUrl, c.chainId, account);
  try {
    const { request } = await publicClient.simulateContract({
      account,
      address: c.registry,
      abi: FederationRegistry.abi,
      functionName,
      args,
    } as never);
    const hash = await (wallet as NonNullable<typeof wallet>).writeContract(request as never);
    const receipt = await publicClient.waitForTransactionReceipt({ hash });
    if (receipt.status !== "success") throw new Error(`transaction ${hash} reverted`);
    return hash;
  } catch (err) {
    throw refusal(err, what);
  }
}

interface Entry {
  publicKey: Hex;
  url: string;
  metadata: string;
  status: number;
  registeredAt: bigint;
  keyId: number;
  validUntil: bigint;
}

async function readEntry(c: { rpcUrl: string; chainId: number; registry: Address }, who: Address): Promise<Entry> {
  const { publicClient } = chainClients(c.rpcUrl, c.chainId);
  return (await publicClient.readContract({
    address: c.registry,
    abi: FederationRegistry.abi,
    functionName: "getCoordinator",
    args: [who],
  })) as Entry;
}

const days = (value: string) => {
  const n = Number(value);
  if (!(n > 0 && n <= 3650)) throw new InvalidArgumentError("expected a number of days from 0 to 3650");
  return n;
};

/** The governance key: SHAREDLLM_GOVERNOR_KEY, or the deployer's well-known key on the dev chain. */
function governor(chainId: number): LocalAccount {
  const key = process.env.SHAREDLLM_GOVERNOR_KEY;
  if (key) {
    if (!/^0x[0-9a-fA-F]{64}$/.test(key))
      throw new SharedLLMError("config", "SHAREDLLM_GOVERNOR_KEY must be a private key (0x and 64 hex digits)");
    return privateKeyToAccount(key as Hex);
  }
  if (chainId === DEV_CHAIN_ID) return privateKeyToAccount(DEV_DEPLOYER_KEY);
  throw new SharedLLMError("config", "set SHAREDLLM_GOVERNOR_KEY to the key that holds the registry's governor role");
}

const iso = (s: bigint) => new Date(Number(s) * 1000).toISOString();

export function federationCommand(): Command {
  const cmd = new Command("federation").description("this coordinator in the federation registry: register, endorse, peers, governance");

  chainOptions(
    cmd.command("register").description("register this coordinator (its key, URL, key id and valid-until) in FederationRegistry"),
  )
    .requiredOption("--url <url>", "the URL peer coordinators reach this one at (https beyond loopback)")
    .option("--name <name>", "the site's name, shown to peers", "")
    .option("--contact <contact>", "how to reach the site's operator (email, URL)", "")
    .addOption(new Option("--valid-days <days>", "how long the key is valid").default(365).argParser(days))
    .action(async (o: ChainArgs & { url: string; name: string; contact: string; validDays: number }) => {
      const { home } = resolvePaths();
      const c = await registryOf(home, o);
      const account = await coordinatorAccount(home);
      // peers refuse to call a site over plain http beyond loopback: say so before it is on chain
      const problem = peerUrlProblem(o.url);
      if (problem) throw new SharedLLMError("config", `--url ${o.url} cannot be used: ${problem}`);
      const url = new URL(o.url);
      const validUntil = BigInt(Math.floor(Date.now() / 1000 + o.validDays * 86_400));
      const metadata = JSON.stringify({ name: o.name, contact: o.contact });
      const publicKey = `0x${account.publicKey.slice(4)}` as Hex;
      await send(c, account, "register", [publicKey, 1, validUntil, url.origin, metadata], "registration");
      process.stdout.write(
        `registered ${account.address} at ${url.origin} (key id 1, valid until ${iso(validUntil)}); status: pending until governance admits it or a peer endorses it\n`,
      );
    });

  chainOptions(cmd.command("renew").description("give this coordinator's key the next key id and a new valid-until"))
    .addOption(new Option("--valid-days <days>", "how long the key is valid from now").default(365).argParser(days))
    .action(async (o: ChainArgs & { validDays: number }) => {
      const { home } = resolvePaths();
      const c = await registryOf(home, o);
      const account = await coordinatorAccount(home);
      const e = await readEntry(c, account.address);
      if (e.status === 0) throw new SharedLLMError("refused", `${account.address} is not registered: run sharedllm federation register`);
      const validUntil = BigInt(Math.floor(Date.now() / 1000 + o.validDays * 86_400));
      await send(c, account, "renewKey", [e.keyId + 1, validUntil], "renewal");
      process.stdout.write(`renewed ${account.address}: key id ${e.keyId + 1}, valid until ${iso(validUntil)}\n`);
    });

  for (const [name, value] of [
    ["endorse", true],
    ["unendorse", false],
  ] as const) {
    chainOptions(
      cmd
        .command(`${name} <peer>`)
        .description(value ? "trust a registered peer from this site (this coordinator must be admitted)" : "stop endorsing a peer"),
    ).action(async (peer: string, o: ChainArgs) => {
      const { home } = resolvePaths();
      const p = parseAddress(peer);
      const c = await registryOf(home, o);
      const account = await coordinatorAccount(home);
      await send(c, account, "endorse", [p, value], name === "endorse" ? "the endorsement" : "withdrawing the endorsement");
      process.stdout.write(`${account.address} ${value ? "endorses" : "no longer endorses"} ${p}\n`);
    });
  }

  for (const [name, fn] of [
    ["admit", "admit"],
    ["revoke", "revoke"],
  ] as const) {
    chainOptions(
      cmd
        .command(`${name} <coordinator>`)
        .description(
          `governance: ${name === "admit" ? "admit a registered coordinator (every site trusts it)" : "revoke a coordinator (every site cuts it off within its refresh interval)"}; signs with SHAREDLLM_GOVERNOR_KEY`,
        ),
    ).action(async (who: string, o: ChainArgs) => {
      const { home } = resolvePaths();
      const w = parseAddress(who);
      const c = await registryOf(home, o);
      await send(c, governor(c.chainId), fn, [w], name === "admit" ? "admission" : "revocation");
      process.stdout.write(`${w} ${name === "admit" ? "admitted" : "revoked"}\n`);
    });
  }

  chainOptions(cmd.command("status").description("this coordinator's registration: status, URL, key id, valid-until")).action(
    async (o: ChainArgs) => {
      const { home } = resolvePaths();
      const c = await registryOf(home, o);
      const account = await coordinatorAccount(home);
      const e = await readEntry(c, account.address);
      const lines =
        e.status === 0
          ? [`coordinator ${account.address}: not registered (sharedllm federation register --url <url>)`]
          : [
              `coordinator ${account.address}: ${STATUS[e.status]}`,
              `  url:         ${e.url}`,
              `  key id:      ${e.keyId}`,
              `  valid until: ${iso(e.validUntil)}${Number(e.validUntil) * 1000 < Date.now() ? " (expired: sharedllm federation renew)" : ""}`,
              `  metadata:    ${e.metadata}`,
            ];
      process.stdout.write(`${[...lines, `  registry:    ${c.registry} on chain ${c.chainId}`].join("\n")}\n`);
    },
  );

  chainOptions(cmd.command("peers").description("the registered coordinators, and whether this site trusts each (and why)"))
    .option("--json", "print JSON")
    .action(async (o: ChainArgs & { json?: boolean }) => {
      const { home } = resolvePaths();
      const c = await registryOf(home, o);
      const self = (await coordinatorAccount(home)).address;
      const { publicClient } = chainClients(c.rpcUrl, c.chainId);
      const all = (await publicClient.readContract({
        address: c.registry,
        abi: FederationRegistry.abi,
        functionName: "coordinators",
      })) as Address[];
      const peers = await Promise.all(
        all
          .filter((a) => a.toLowerCase() !== self.toLowerCase())
          .map(async (a) => {
            const e = await readEntry(c, a);
            const endorsed = (await publicClient.readContract({
              address: c.registry,
              abi: FederationRegistry.abi,
              functionName: "endorsed",
              args: [self, a],
            })) as boolean;
            const expired = Number(e.validUntil) * 1000 <= Date.now();
            const status = STATUS[e.status] ?? "unregistered";
            const trust =
              status === "revoked"
                ? "not trusted (revoked)"
                : expired
                  ? "not trusted (key expired)"
                  : status === "admitted"
                    ? "trusted (admitted by governance)"
                    : endorsed
                      ? "trusted (endorsed by this site)"
                      : "not trusted (pending)";
            return { address: a, url: e.url, status, endorsed, keyId: e.keyId, validUntil: iso(e.validUntil), trust, metadata: e.metadata };
          }),
      );
      if (o.json) {
        process.stdout.write(`${JSON.stringify(peers, null, 2)}\n`);
        return;
      }
      if (!peers.length) process.stdout.write("no other coordinator is registered\n");
      for (const p of peers)
        process.stdout.write(`${p.address}  ${p.url}  ${p.trust}  key id ${p.keyId}, valid until ${p.validUntil}  ${p.metadata}\n`);
    });
  return cmd;
}

function parseAddress(v: string): Address {
  try {
    return address(v);
  } catch {
    throw new SharedLLMError("config", `"${v}" is not an address (0x and 40 hex digits)`);
  }
}
