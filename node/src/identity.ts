/**
 * The node's identity: a secp256k1 key (an Ethereum account, also its payout
 * address), created on first start in `$SHAREDLLM_HOME/node-key.json`, readable
 * only by its owner. The private key never leaves this file and is never logged.
 */
import { chmod, mkdir, readFile, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { SharedLLMError } from "./errors.js";
import { writeFileAtomic } from "./lock.js";

export interface NodeIdentity {
  /** lower-case address: the node id */
  nodeId: string;
  account: PrivateKeyAccount;
  file: string;
  created: boolean;
}

export async function loadNodeIdentity(home: string, opts: { create?: boolean } = { create: true }): Promise<NodeIdentity | undefined> {
  const key = await loadKeyFile(join(home, "node-key.json"), opts);
  return key && { nodeId: key.account.address.toLowerCase(), ...key };
}

/** A secp256k1 key in a 0600 JSON file (`{ address, privateKey }`), created when absent and asked to. */
export async function loadKeyFile(
  file: string,
  opts: { create?: boolean } = { create: true },
): Promise<{ account: PrivateKeyAccount; file: string; created: boolean } | undefined> {
  let privateKey: `0x${string}`;
  let created = false;
  try {
    privateKey = (JSON.parse(await readFile(file, "utf8")) as { privateKey: `0x${string}` }).privateKey;
    // a key file others can read is tightened, not trusted as is
    if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      throw new SharedLLMError("config", `${file} is unreadable: ${(err as Error).message}`, {
        hint: "it holds this machine's node key: restore it from a backup (without it this machine is a new node, and what the old one earned stays with the old key)",
      });
    if (!opts.create) return undefined;
    privateKey = generatePrivateKey();
    const address = privateKeyToAccount(privateKey).address;
    await mkdir(dirname(file), { recursive: true });
    await writeFileAtomic(file, `${JSON.stringify({ address, privateKey }, null, 2)}\n`, 0o600);
    created = true;
  }
  return { account: privateKeyToAccount(privateKey), file, created };
}
