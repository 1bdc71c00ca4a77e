import { DEV_DEPLOYER_KEY, FederationRegistry } from "@sharedllm/contracts";
import { startTestChain } from "@sharedllm/testkit/chain";
import { type Address, createWalletClient, defineChain, http, type PublicClient } from "viem";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { RegistryReader, touchedBy } from "./registry.js";

const SELF = "0x00000000000000000000000000000000000000aa" as Address;
const OTHER = "0x00000000000000000000000000000000000000bb" as Address;
const at = (n: number) => `0x${n.toString(16).padStart(40, "0")}` as Address;

describe("touchedBy", () => {
  it("ignores a flood of strangers' registrations, updates and renewals, and others' endorsements", () => {
    const spam = Array.from({ length: 10_000 }, (_, i) => ({
      eventName: ["Registered", "Updated", "KeyRenewed"][i % 3] as string,
      args: { coordinator: at(0x1000 + i) },
    }));
    const endorsedElsewhere = { eventName: "Endorsed", args: { site: OTHER, peer: at(0x1000) } };
    expect(touchedBy([...spam, endorsedElsewhere], SELF, () => false).size).toBe(0);
  });

  it("tracks this site, those governance admitted or revoked, those this site endorsed, and changes to those known", () => {
    const touched = touchedBy(
      [
        { eventName: "Registered", args: { coordinator: SELF } },
        { eventName: "Admitted", args: { coordinator: at(1) } },
        { eventName: "Revoked", args: { coordinator: at(2) } },
        { eventName: "Endorsed", args: { site: SELF.toUpperCase().replace("0X", "0x") as Address, peer: at(3) } },
        { eventName: "Updated", args: { coordinator: at(4) } },
        { eventName: "KeyRenewed", args: { coordinator: at(5) } },
      ],
      SELF,
      (a) => a === at(4),
    );
    expect([...touched].sort()).toEqual([SELF, at(1), at(2), at(3), at(4)].sort());
  });
});

describe("RegistryReader on the dev chain", () => {
  it("reads from the registry's first block in ranges the node accepts (halving a refused one), and only as far as its confirmations", async () => {
    const chain = await startTestChain();
    try {
      const devChain = defineChain({
        id: chain.chainId,
        name: "dev",
        nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
        rpcUrls: { default: { http: [chain.rpcUrl] } },
      });
      const governance = privateKeyToAccount(DEV_DEPLOYER_KEY);
      const site = privateKeyToAccount(generatePrivateKey());
      await chain.fund(site.address);
      const send = async (account: PrivateKeyAccount, functionName: string, args: readonly unknown[]) => {
        const wallet = createWalletClient({ account, chain: devChain, transport: http(chain.rpcUrl) });
        const hash = await wallet.writeContract({ address: chain.registry, abi: FederationRegistry.abi, functionName, args } as never);
        return (await chain.publicClient.waitForTransactionReceipt({ hash })).blockNumber;
      };
      // one block at a time: state at blocks hardhat_mine reserves in bulk cannot be read back
      const mine = async (blocks: number) => {
        for (let i = 0; i < blocks; i++) await chain.test.request({ method: "evm_mine" } as never);
      };
      const validUntil = BigInt(Math.floor(Date.now() / 1000) + 3600);
      await send(site, "register", [`0x${site.publicKey.slice(4)}`, 1, validUntil, "https://site.example", "{}"]);
      const admittedAt = await send(governance, "admit", [site.address]);
      await mine(40);
      const me = privateKeyToAccount(generatePrivateKey()).address;
      // a node that refuses log queries over 20 blocks, as public RPCs cap them
      const ranges: bigint[] = [];
      const capped = new Proxy(chain.publicClient, {
        get(target, prop, receiver) {
          if (prop !== "getContractEvents") return Reflect.get(target, prop, receiver);
          return (q: { fromBlock: bigint; toBlock: bigint }) => {
            ranges.push(q.toBlock - q.fromBlock + 1n);
            if (q.toBlock - q.fromBlock >= 20n) return Promise.reject(new Error("query exceeds 20 blocks"));
            return target.getContractEvents(q as never);
          };
        },
      });
      const reader = new RegistryReader(capped as PublicClient, chain.registry, me, { maxRange: 64n, confirmations: 5 });
      expect((await reader.read()).get(site.address.toLowerCase())?.status).toBe("admitted");
      expect(ranges.filter((r) => r > 20n).length).toBeGreaterThan(0);
      // once narrowed, it stays narrow
      expect(ranges.slice(ranges.findIndex((r) => r <= 20n)).every((r) => r <= 20n)).toBe(true);

      // nothing before fromBlock is read: an admission there is not seen
      const late = new RegistryReader(chain.publicClient, chain.registry, me, { fromBlock: admittedAt + 1n });
      expect((await late.read()).has(site.address.toLowerCase())).toBe(false);

      // a revocation is seen only once it is `confirmations` blocks deep
      await send(governance, "revoke", [site.address]);
      expect((await reader.read()).get(site.address.toLowerCase())?.status).toBe("admitted");
      await mine(5);
      expect((await reader.read()).get(site.address.toLowerCase())?.status).toBe("revoked");
    } finally {
      await chain.stop();
    }
  }, 60_000);
});
