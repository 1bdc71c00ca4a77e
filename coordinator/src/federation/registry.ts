/**
 * FederationRegistry through viem: the registry's events since the last read say which
 * coordinators changed, and their current state is read with getCoordinator and endorsed. Only
 * coordinators this site may come to trust are tracked: itself, those governance admitted or
 * revoked, and those this site endorsed; registering is permissionless, so a stranger's
 * registrations and updates are not even read until one of those happens. Reads go at most
 * READ_CONCURRENCY at a time. A chain whose head went backwards (a restarted dev chain) is read
 * again from the start.
 */
import { FederationRegistry } from "@sharedllm/contracts";
import type { Address, PublicClient } from "viem";
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

export class RegistryReader {
  private readonly entries = new Map<string, RegistryEntry>();
  private cursor = -1n;

  constructor(
    private readonly client: PublicClient,
    readonly registry: Address,
    private readonly self: Address,
  ) {}

  /** Reads what changed since the last call; returns every tracked coordinator. */
  async read(): Promise<Map<string, RegistryEntry>> {
    const latest = await this.client.getBlockNumber();
    if (latest < this.cursor) {
      this.entries.clear();
      this.cursor = -1n;
    }
    if (latest === this.cursor) return this.entries;
    const logs = await this.client.getContractEvents({
      address: this.registry,
      abi: FederationRegistry.abi,
      fromBlock: this.cursor + 1n,
      toBlock: latest,
    });
    const touched = touchedBy(logs as unknown as RegistryEvent[], this.self, (a) => this.entries.has(a));
    const read = await mapLimit([...touched], READ_CONCURRENCY, (a) => this.readOne(a, latest));
    for (const e of read) if (e) this.entries.set(e.address, e);
    this.cursor = latest;
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
