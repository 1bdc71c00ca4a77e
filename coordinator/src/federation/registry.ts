/**
 * FederationRegistry through viem: the registry's events since the last read say which
 * coordinators changed (registered, updated, renewed, admitted, revoked, endorsed by this site),
 * and their current state is read with getCoordinator and endorsed. A chain whose head went
 * backwards (a restarted dev chain) is read again from the start.
 */
import { FederationRegistry } from "@sharedllm/contracts";
import type { Address, PublicClient } from "viem";
import type { RegistryEntry } from "./trust.js";

const STATUS = ["none", "pending", "admitted", "revoked"] as const;

export class RegistryReader {
  private readonly entries = new Map<string, RegistryEntry>();
  private cursor = -1n;

  constructor(
    private readonly client: PublicClient,
    readonly registry: Address,
    private readonly self: Address,
  ) {}

  /** Reads what changed since the last call; returns every registered coordinator. */
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
    const touched = new Set<Address>();
    const self = this.self.toLowerCase();
    for (const log of logs) {
      const args = log.args as { coordinator?: Address; site?: Address; peer?: Address };
      if (args.coordinator) touched.add(args.coordinator);
      else if (args.peer && args.site?.toLowerCase() === self) touched.add(args.peer);
    }
    const read = await Promise.all([...touched].map((a) => this.readOne(a, latest)));
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
