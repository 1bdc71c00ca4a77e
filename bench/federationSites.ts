/**
 * The two federated sites of the federation bench, in their own process (so that the bench
 * client's CPU is not theirs and theirs can be read from /proc): the testkit's
 * `startFederatedSites`, and API keys of one user funded at both sites. Prints one JSON
 * line with the URLs and keys when ready; stops everything when its stdin closes (the bench
 * ended or died) or on SIGTERM/SIGINT.
 * Usage: tsx bench/federationSites.ts <engine threads>
 */
import { cpus } from "node:os";
import { createApiKey } from "@sharedllm/coordinator";
import { devWallet } from "@sharedllm/testkit/chain";
import { PEER_MODEL, startFederatedSites } from "@sharedllm/testkit/federation";

const threads = Number(process.argv[2]) || cpus().length;
// two slots at B: A reads B's free slots on a poll, and one slot taken by the previous local request
// would still read as busy; requests run one at a time all the same. A's node stays idle.
const sites = await startFederatedSites({ node: { slots: 2, threads, contextPerSlot: 1024 } });
let stopping: Promise<void> | undefined;
const stop = () => {
  stopping ??= sites.stop().then(() => process.exit(0));
  return stopping;
};
process.stdin.on("end", stop).on("close", stop).resume();
process.once("SIGTERM", stop).once("SIGINT", stop);

// a funded user at each site: both arms hold and charge credits, as a paying user's request does
const user = devWallet(7);
await sites.chain.deposit(user, 1_000_000n, sites.a.address);
await sites.chain.deposit(user, 1_000_000n, sites.b.address);
process.stdout.write(
  `${JSON.stringify({
    model: PEER_MODEL,
    a: { url: sites.a.coordinator.url, apiKey: (await createApiKey(sites.a.coordinator.db, "bench", user.address)).secret },
    b: { url: sites.b.coordinator.url, apiKey: (await createApiKey(sites.b.coordinator.db, "bench", user.address)).secret },
  })}\n`,
);
