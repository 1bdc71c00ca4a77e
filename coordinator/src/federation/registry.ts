/**
 * FederationRegistry through viem: the registry's events since the last read say which
 * coordinators changed, and their current state is read with getCoordinator and endorsed. Only
 * coordinators this site may come to trust are tracked: itself, those governance admitted or
 * revoked, and those this site endorsed; registering is permissionless, so a stranger's
 * registrations and updates are not even read until one of those happens. Reads go at most
 * READ_CONCURRENCY at a time. Events are read from the registry's first block (`fromBlock`) in
 * ranges of at most `maxRange` blocks, halved whenever the node refuses a range (chainLogs.ts),
 * and only up to `confirmations` blocks below the head, state read at that same block, so a
 * shallower reorganisation never reaches trust. A chain whose head went backwards past what was
 * read (a restarted dev chain) is read again from the start.
 */
import { FederationRegistry } from "@sharedllm/contracts";
import type { Address, PublicClient } from "viem";
import { confirmedHead, LogRanges } from "../chainLogs.js";
import type { RegistryEntry } from "./trust.js";

const STATUS = ["none", "pending", "admitted", "revoked"] as const;

/** How many coordinators are read from the chain at once. */
export const READ_CONCURRENCY = 8;

/** A registry event's name and arguments, as far as tracking goes. */
export interface RegistryEvent {
  eventName: string;
  args: { coordinator?: Address; site?: Address; peer?: Address };
}

/**
 * The coordinators whose state these events may have changed and that this site tracks (pure):
 * any admitted, revoked or endorsed by this site; a registration, update or renewal only of
 * one already tracked (`known`) or of this site itself.
 */
export function touchedBy(events: readonly RegistryEvent[], self: Address, known: (a: string) => boolean): Set<Address> {
  const me = self.toLowerCase();
  const touched = new Map<string, Address>();
  for (const { eventName, args } of events) {
    let a: Address | undefined;
    if (eventName === "Admitted" || eventName === "Revoked") a = args.coordinator;
    else if (eventName === "Endorsed") a = args.site?.toLowerCase() === me ? args.peer : undefined;
    else if (args.coordinator && (known(args.coordinator.toLowerCase()) || args.coordinator.toLowerCase() === me)) a = args.coordinator;
    if (a) touched.set(a.toLowerCase(), a);
  }
  return new Set(touched.values());
}

/** `fn` over `items`, at most `limit` at a time. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Where and how the registry's events are read. */
export interface RegistryReadOptions {
  /** the registry's first block (its deployment): nothing before it is read. Default 0 */
  fromBlock?: bigint;
  /** how many blocks below the head the reader stays. Default 0 */
  confirmations?: number;
  /** the most blocks one log query spans (halved while the node refuses). Default 10,000 */
  maxRange?: bigint;
}

export class RegistryReader {
  private readonly entries = new Map<string, RegistryEntry>();
  /** the last block read; below fromBlock before the first read */
  private cursor: bigint;
  private readonly fromBlock: bigint;
  private readonly ranges: LogRanges;

  constructor(
    private readonly client: PublicClient,
    readonly registry: Address,
    private readonly self: Address,
    private readonly o: RegistryReadOptions = {},
  ) {
    this.fromBlock = o.fromBlock ?? 0n;
    this.cursor = this.fromBlock - 1n;
    this.ranges = new LogRanges(o.maxRange);
  }

  /** Reads what changed since the last call; returns every tracked coordinator. */
  async read(): Promise<Map<string, RegistryEntry>> {
    const head = await confirmedHead(this.client, this.o.confirmations);
    if (head < this.cursor) {
      this.entries.clear();
      this.cursor = this.fromBlock - 1n;
    }
    if (head <= this.cursor) return this.entries;
    const logs = await this.ranges.read(
      this.cursor + 1n,
      head,
      async (fromBlock, toBlock) =>
        (await this.client.getContractEvents({
          address: this.registry,
          abi: FederationRegistry.abi,
          fromBlock,
          toBlock,
        })) as unknown as RegistryEvent[],
    );
    const touched = touchedBy(logs, this.self, (a) => this.entries.has(a));
    const read = await mapLimit([...touched], READ_CONCURRENCY, (a) => this.readOne(a, head));
    for (const e of read) if (e) this.entries.set(e.address, e);
    this.cursor = head;
    return this.entries;
  }

  private async readOne(address: Address, blockNumber: bigint): Promise<RegistryEntry | undefined> {
    const [c, endorsed] = await Promise.all([
      this.client.readContract({
        address: this.registry,
        abi: FederationRegistry.abi,
        functionName: "getCoordinator",
        args: [address],
        blockNumber,
      }),
      this.client.readContract({
        address: this.registry,
        abi: FederationRegistry.abi,
        functionName: "endorsed",
        args: [this.self, address],
        blockNumber,
      }),
    ]);
    const status = STATUS[c.status];
    if (!status || status === "none") return undefined;
    return {
      address: address.toLowerCase() as Address,
      publicKey: c.publicKey,
      url: c.url,
      metadata: c.metadata,
      status,
      keyId: c.keyId,
      validUntil: Number(c.validUntil),
      registeredAt: Number(c.registeredAt),
      endorsed,
    };
  }
}
