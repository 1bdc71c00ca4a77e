/** Argument parsers and options shared by the subcommands. */
import { isIP } from "node:net";
import { DEFAULT_RATE_LIMITS, type IndexerSettings } from "@sharedllm/coordinator";
import { SharedLLMError } from "@sharedllm/node";
import { MAX_SLOTS } from "@sharedllm/protocol";
import { type Command, InvalidArgumentError, Option } from "commander";
import { type Logger, pino } from "pino";

/** The log a command writes to stderr: warnings and errors, or with --verbose everything from info up. */
export function commandLogger(verbose: boolean | undefined): Logger {
  return pino({ level: verbose ? "info" : "warn" }, pino.destination(2));
}

/** A parser of whole numbers from `min` to `max`, for commander's argParser. */
function wholeNumberFrom(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
    return n;
  };
}

/** A whole number from 1 to 65535 (counts: threads, limits). */
export const positiveInt = wholeNumberFrom(1, 65_535);

/** How many jobs a node runs at once: 1 to MAX_SLOTS, the most a coordinator accepts. */
export const slotCount = wholeNumberFrom(1, MAX_SLOTS);

/** A whole number from 0 to 65535 (ports, where 0 picks a free one; seconds, where 0 means at once). */
export const wholeNumber = wholeNumberFrom(0, 65_535);

/** A block number of a chain. */
export function blockNumber(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError("expected a block number (a whole number)");
  return n;
}

/** An EVM address. */
export function address(value: string): `0x${string}` {
  if (!/^0x[0-9a-fA-F]{40}$/.test(value)) throw new InvalidArgumentError("expected an address (0x and 40 hex digits)");
  return value as `0x${string}`;
}

/**
 * One more trusted proxy (repeatable): an IP address, a CIDR range, or one of the names
 * loopback, linklocal, uniquelocal.
 */
export function proxyAddress(value: string, previous: string[] = []): string[] {
  const [ip = "", prefix, ...rest] = value.split("/");
  const family = isIP(ip);
  const bits = Number(prefix);
  const range = prefix === undefined || (/^\d+$/.test(prefix) && bits <= (family === 6 ? 128 : 32));
  if (!["loopback", "linklocal", "uniquelocal"].includes(value) && (family === 0 || !range || rest.length > 0))
    throw new InvalidArgumentError("expected an IP address, a CIDR range (10.0.0.0/8) or loopback, linklocal, uniquelocal");
  return [...previous, value];
}

/** Where a coordinator runs (`up`, `coordinator start`, `site init`): port, address, database, and --verbose. */
export function addCoordinatorOptions(cmd: Command, o: { portHelp: string; host: string; hostHelp: string }): Command {
  return cmd
    .addOption(new Option("--port <port>", o.portHelp).default(8787).argParser(wholeNumber))
    .option("--host <host>", o.hostHelp, o.host)
    .addOption(new Option("--database-url <url>", "PostgreSQL instead of embedded PGlite").env("DATABASE_URL"))
    .option("--verbose", "log at info level");
}

export interface CoordinatorArgs {
  port: number;
  host: string;
  databaseUrl?: string;
  verbose?: boolean;
}

/** Settlement options shared by `up` and `coordinator start`. */
export function addSettlementOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--settle-after <seconds>", "settle credits on chain once the oldest unsettled entry is this old")
        .default(300)
        .argParser(wholeNumber),
    )
    .addOption(new Option("--batch-size <n>", "settle once this many charges and earnings wait").default(1000).argParser(positiveInt));
}

export interface SettlementArgs {
  settleAfter: number;
  batchSize: number;
}

/** The coordinator's settlement options from the command's. */
export function settlementOptions(o: SettlementArgs): { maxAgeMs: number; batchSize: number } {
  return { maxAgeMs: o.settleAfter * 1000, batchSize: o.batchSize };
}

/** A share from 0 to 1. */
export function share(value: string): number {
  const n = Number(value);
  if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError("expected a number from 0 to 1");
  return n;
}

/** Audit options shared by `up` and `coordinator start` (docs/verification.md). */
export function addAuditOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        "--auditor <nodeId...>",
        "node(s) trusted to audit other nodes' paid jobs (started with --auditor); enables audits",
      ).argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), address(v)]),
    )
    .addOption(
      new Option("--audit-rate <share>", "share of an established node's paid jobs audited (new and suspect nodes: all)")
        .default(0.5)
        .argParser(share),
    )
    .addOption(
      new Option("--audit-window <seconds>", "how long a node's earnings wait for their audits before they settle")
        .default(600)
        .argParser(wholeNumber),
    );
}

export interface AuditArgs {
  auditor?: string[];
  auditRate: number;
  auditWindow: number;
}

/** The coordinator's audit options from the command's; `local` is a node this command runs itself (trusted). */
export function auditOptions(o: AuditArgs, local: string[] = []): { auditors: string[]; rate: number; windowMs: number } {
  return { auditors: [...local, ...(o.auditor ?? [])], rate: o.auditRate, windowMs: o.auditWindow * 1000 };
}

/** Federation with other sites (`up`, `coordinator start`; docs/federation.md). */
export function addFederationOptions(cmd: Command): Command {
  return cmd
    .option("--federation", "federate with other sites: trust from FederationRegistry, signed coordinator-to-coordinator calls")
    .addOption(
      new Option(
        "--federation-registry <address>",
        "FederationRegistry address (default: the dev chain's, or the chain's deployment record)",
      ).argParser(address),
    )
    .addOption(
      new Option("--federation-refresh <seconds>", "how often the registry is read: a revoked peer is cut off within it")
        .default(15)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--federation-registry-from-block <block>", "the registry's deployment block: its events are read from there").argParser(
        blockNumber,
      ),
    )
    .addOption(
      new Option("--federation-confirmations <blocks>", "read the registry this many blocks below the chain's head (reorganisations)")
        .default(0)
        .argParser(wholeNumber),
    )
    .option("--no-federation-outbound", "forward no jobs to peer sites (by default a job no node here can take may go to a trusted peer)")
    .option("--no-federation-inbound", "run no jobs forwarded by peer sites")
    .addOption(
      new Option("--federation-inbound-cap <jobs>", "the most jobs one peer site may have running here at once (429 beyond)").argParser(
        positiveInt,
      ),
    );
}

export interface FederationArgs {
  federation?: boolean;
  federationRegistry?: `0x${string}`;
  federationRefresh: number;
  federationRegistryFromBlock?: number;
  federationConfirmations: number;
  federationOutbound: boolean;
  federationInbound: boolean;
  federationInboundCap?: number;
}

/** How the registry is read, from the command's options. */
export function registryReadOptions(o: FederationArgs): { fromBlock?: bigint; confirmations: number } {
  return {
    fromBlock: o.federationRegistryFromBlock === undefined ? undefined : BigInt(o.federationRegistryFromBlock),
    confirmations: o.federationConfirmations,
  };
}

/** The chain's history for the portal (`up`, `coordinator start`; docs/indexing.md). */
export function addIndexerOptions(cmd: Command): Command {
  return cmd
    .option("--no-index", "keep no history of the chain's events (the portal's History page then has nothing to show)")
    .addOption(
      new Option(
        "--index-from-block <block>",
        "the contracts' deployment block: history is read from there (default: the deployment record's)",
      ).argParser(blockNumber),
    )
    .addOption(
      new Option(
        "--index-confirmations <blocks>",
        "index this many blocks below the chain's head (default: 0 on the dev chain, else 3)",
      ).argParser(wholeNumber),
    )
    .option("--explorer-url <url>", "a block explorer's base URL: the portal links each transaction to <url>/tx/<hash>");
}

export interface IndexerArgs {
  index: boolean;
  indexFromBlock?: number;
  indexConfirmations?: number;
  explorerUrl?: string;
}

/** The indexer's settings from the command's; `known` is what the deployment says (registry, first block). */
export function indexerSettings(o: IndexerArgs, known: { registry?: `0x${string}`; startBlock?: number }): IndexerSettings | false {
  if (!o.index) return false;
  if (o.explorerUrl !== undefined && !/^https?:\/\/[^/]/.test(o.explorerUrl)) {
    throw new SharedLLMError("config", `--explorer-url must be an http(s) URL, not ${o.explorerUrl}`);
  }
  const from = o.indexFromBlock ?? known.startBlock;
  return {
    registry: known.registry,
    fromBlock: from === undefined ? undefined : BigInt(from),
    confirmations: o.indexConfirmations,
    explorerUrl: o.explorerUrl?.replace(/\/+$/, ""),
  };
}

/** Forwarded jobs' options from the command's. */
export function forwardingOptions(o: FederationArgs): { outbound: boolean; inbound: boolean; inboundCapPerPeer?: number } {
  return { outbound: o.federationOutbound, inbound: o.federationInbound, inboundCapPerPeer: o.federationInboundCap };
}

/** How a coordinator listens: TLS, plain HTTP beyond loopback, its public URLs, rate limits (`up`, `coordinator start`, `site init`). */
export function addListenOptions(cmd: Command): Command {
  return cmd
    .option("--tls-cert <file>", "PEM certificate (chain) for the address users and nodes reach: serve HTTPS and WSS (with --tls-key)")
    .option("--tls-key <file>", "PEM private key of --tls-cert")
    .option("--insecure-http", "serve plain HTTP beyond loopback: API keys, prompts and join tokens cross the network in clear")
    .option(
      "--public-url <url...>",
      "URL(s) users reach this coordinator at; sign-in messages must name one (default: the addresses it listens on)",
    )
    .addOption(
      new Option(
        "--trust-proxy <address...>",
        "the reverse proxies in front (nginx: docs/hosting.md): a request from one counts as from the client its X-Forwarded-For names (rate limits)",
      ).argParser(proxyAddress),
    )
    .addOption(
      new Option("--max-registrations-per-minute <n>", "node registrations one address may attempt per minute")
        .default(DEFAULT_RATE_LIMITS.registrations)
        .argParser(positiveInt),
    )
    .addOption(
      new Option("--max-sign-ins-per-minute <n>", "wallet sign-ins one address may attempt per minute")
        .default(DEFAULT_RATE_LIMITS.signIns)
        .argParser(positiveInt),
    )
    .addOption(
      new Option(
        "--queue-wait <seconds>",
        "how long a request waits its turn when no node serving its model has room (503 after; 0: at once)",
      )
        .default(10)
        .argParser(wholeNumber),
    )
    .addOption(
      new Option(
        "--browser-nodes <who>",
        "who may contribute from a browser tab (Contribute page): off, token (those given the site's join link, as for nodes), open (any wallet)",
      )
        .choices(["off", "token", "open"])
        .default("token"),
    );
}

export interface ListenArgs {
  tlsCert?: string;
  tlsKey?: string;
  insecureHttp?: boolean;
  publicUrl?: string[];
  trustProxy?: string[];
  maxRegistrationsPerMinute: number;
  maxSignInsPerMinute: number;
  queueWait: number;
  browserNodes: "off" | "token" | "open";
}
