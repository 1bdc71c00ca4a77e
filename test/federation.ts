/**
 * Two federated sites on one dev chain, as the forwarding tests and the federation bench set
 * them up: coordinators A and B with credits and federation, each with a real node. A's node
 * serves the default model; B's node serves the same file under a second name only B has
 * (PEER_MODEL), so A's users can have it only through B. Both are registered, A is admitted by
 * governance and endorses B, and A's coordinator has credits in escrow at B (it is B's customer).
 */
import { randomBytes } from "node:crypto";
import { symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type Coordinator, startCoordinator } from "@sharedllm/coordinator";
import { ModelStore, type NodeDaemon, startNodeDaemon } from "@sharedllm/node";
import type { Address, Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { startTestChain, type TestChain } from "./chain.ts";
import { quietLogger, runCli, tempPaths, testDatabase, waitFor } from "./helpers.ts";

/** the name only B's node serves (the default model's file) */
export const PEER_MODEL = "peer-smollm";

export interface Site {
  name: string;
  home: string;
  key: Hex;
  address: Address;
  coordinator: Coordinator;
  node: NodeDaemon;
  nodeHome: string;
}

export interface FederatedSites {
  chain: TestChain;
  a: Site;
  b: Site;
  /** `sharedllm federation <args>` as a site's operator (or, for admit and revoke, governance) */
  fed(s: Site, ...args: string[]): Promise<void>;
  /** stops both sites and the chain, and removes their homes */
  stop(): Promise<void>;
}

export interface FederatedSitesOptions {
  /** how often A asks B what it serves (ms); the coordinator's default when unset */
  capacityPollMs?: number;
  /** a forwarded or local job whose unit failed mid-stream waits this long for another to continue it */
  continueWaitMs?: number;
  /** each node's engine: slots, threads, context per slot */
  node?: { slots?: number; threads?: number; contextPerSlot?: number };
}

/** Starts the chain and both sites, and waits until A sees B's model. */
export async function startFederatedSites(o: FederatedSitesOptions = {}): Promise<FederatedSites> {
  const cleanups: Array<() => Promise<unknown>> = [];
  const stop = async () => {
    for (const clean of cleanups.reverse()) await clean().catch(() => undefined);
  };
  try {
    const chain = await startTestChain();
    cleanups.push(() => chain.stop());

    async function site(name: string, model: string, key: Hex): Promise<Site> {
      const paths = await tempPaths(`sharedllm-fwd-${name}-`);
      cleanups.push(paths.cleanup);
      const account = privateKeyToAccount(key);
      const address = account.address.toLowerCase() as Address;
      await writeFile(join(paths.home, "coordinator-key.json"), JSON.stringify({ address, privateKey: key }), { mode: 0o600 });
      const database = await testDatabase();
      cleanups.push(database.cleanup);
      const joinToken = randomBytes(32).toString("base64url");
      const coordinator = await startCoordinator({
        host: "127.0.0.1",
        port: 0,
        ...database,
        joinToken,
        logger: quietLogger(),
        ...(o.continueWaitMs === undefined ? {} : { continueWaitMs: o.continueWaitMs }),
        ledger: { chain: { rpcUrl: chain.rpcUrl, ledger: chain.ledger, account }, settlement: { maxAgeMs: 60_000, checkEveryMs: 60_000 } },
        federation: {
          rpcUrl: chain.rpcUrl,
          registry: chain.registry,
          privateKey: key,
          refreshMs: 1_000,
          forwarding: o.capacityPollMs === undefined ? {} : { capacityPollMs: o.capacityPollMs },
        },
      });
      cleanups.push(() => coordinator.close());
      const nodePaths = await tempPaths(`sharedllm-fwd-${name}-node-`);
      cleanups.push(nodePaths.cleanup);
      const node = await startNodeDaemon({
        paths: nodePaths,
        coordinatorUrl: coordinator.url,
        joinToken,
        model,
        slots: o.node?.slots ?? 2,
        contextPerSlot: o.node?.contextPerSlot ?? 1024,
        threads: o.node?.threads ?? 1,
        logger: quietLogger(),
      });
      cleanups.push(() => node.stop());
      return { name, home: paths.home, key, address, coordinator, node, nodeHome: nodePaths.home };
    }

    const fed = async (s: Site, ...args: string[]) => {
      const r = await runCli(["federation", ...args, "--chain-rpc-url", chain.rpcUrl, "--registry", chain.registry], {
        SHAREDLLM_HOME: s.home,
      });
      if (r.code !== 0) throw new Error(`sharedllm federation ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
    };

    // B's node: the default model's file under a name only B serves
    const shared = await tempPaths("sharedllm-fwd-model-");
    cleanups.push(shared.cleanup);
    const store = new ModelStore(shared.cache);
    const entry = (await store.get("default")) ?? (await store.pull("default"));
    const file = join(shared.home, `${PEER_MODEL}.gguf`);
    await symlink(store.blobPath(entry.sha256), file);
    const keys = [generatePrivateKey(), generatePrivateKey()] as const;
    // one transaction at a time from the deployer
    for (const k of keys) await chain.addCoordinator(privateKeyToAccount(k).address);
    const [a, b] = await Promise.all([site("a", "default", keys[0]), site("b", file, keys[1])]);
    await fed(a, "register", "--url", a.coordinator.url, "--name", "site A");
    await fed(b, "register", "--url", b.coordinator.url, "--name", "site B");
    await fed(a, "admit", a.address);
    await fed(a, "endorse", b.address);
    // A's coordinator buys credits in escrow at B: it pays B for its users' forwarded jobs
    await chain.fund(a.address);
    await chain.deposit(privateKeyToAccount(a.key), 1_000_000n, b.address);
    await waitFor("A to see B's model", () => a.coordinator.peers?.get(b.address)?.models.has(PEER_MODEL), 20_000);
    return { chain, a, b, fed, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
