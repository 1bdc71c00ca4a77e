/**
 * The coordinator's view of the CreditLedger contract, through viem: escrow reads for metering,
 * batch settlement transactions (explicit nonce, replacement of a stuck transaction with higher
 * fees) and the chain's own record of settled batches, which is the truth when the database and
 * the chain disagree after a crash.
 */
import { CreditLedger } from "@sharedllm/contracts";
import {
  type Account,
  type Address,
  BaseError,
  type Chain,
  createPublicClient,
  createWalletClient,
  decodeFunctionData,
  defineChain,
  type Hex,
  HttpRequestError,
  http,
  type LocalAccount,
  type PublicClient,
  type Transport,
  type WalletClient,
} from "viem";

/**
 * An RPC URL as it may appear in a message: its scheme and host only (its path, query or user
 * part may hold an API key).
 */
export function redactRpcUrl(rpcUrl: string): string {
  try {
    const u = new URL(rpcUrl);
    return `${u.protocol}//${u.host}`;
  } catch {
    return "the configured RPC URL";
  }
}

/** A chain error's text without the RPC URL in it (viem's messages repeat the URL they called). */
export function chainErrorText(err: Error, rpcUrl: string): string {
  const text = (err as Error & { shortMessage?: string }).shortMessage ?? err.message;
  return text.split(rpcUrl).join(redactRpcUrl(rpcUrl));
}

/** How long a coordinator starting waits for its chain to answer. */
export const CHAIN_WAIT_MS = 30_000;

export interface ChainOptions {
  rpcUrl: string;
  /** CreditLedger address */
  ledger: Address;
  /** the RPC URL clients (claims, the portal) should use; default rpcUrl */
  publicRpcUrl?: string;
  /** the coordinator's own account: it signs settlements and must hold COORDINATOR_ROLE */
  account: LocalAccount;
}

export interface Escrow {
  deposited: bigint;
  spent: bigint;
  pendingWithdrawal: bigint;
  unlockAt: bigint;
  /**
   * When the user is a peer coordinator (federation clearing): what it accepted owing this one,
   * cumulatively; the ledger settles no more of its escrow than that
   */
  peerAccepted?: bigint;
}

export interface BatchCall {
  batchId: number;
  users: Address[];
  cumulativeSpent: bigint[];
  earningsRoot: Hex;
  totalEarnings: bigint;
}

export class LedgerChain {
  readonly public: PublicClient;
  readonly wallet: WalletClient<Transport, Chain, Account>;
  readonly ledger: Address;
  readonly coordinator: Address;
  readonly publicRpcUrl: string;

  private constructor(
    o: ChainOptions,
    readonly chainId: number,
  ) {
    const chain = defineChain({
      id: chainId,
      name: `chain ${chainId}`,
      nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
      rpcUrls: { default: { http: [o.rpcUrl] } },
    });
    const transport = http(o.rpcUrl, { retryCount: 2, timeout: 15_000 });
    this.public = createPublicClient({ chain, transport, pollingInterval: 250 }) as PublicClient;
    const account = o.account;
    this.wallet = createWalletClient({ chain, transport, account });
    this.ledger = o.ledger;
    this.publicRpcUrl = o.publicRpcUrl ?? o.rpcUrl;
    this.coordinator = account.address;
  }

  /**
   * Connects once the chain answers: a node of the chain that is away for a while (restarting,
   * a network blip) is waited for up to `waitMs` (default CHAIN_WAIT_MS), each failed try told to
   * `waiting`; one that does not answer by then is an error.
   */
  static async connect(o: ChainOptions, waiting: (message: string) => void = () => {}, waitMs = CHAIN_WAIT_MS): Promise<LedgerChain> {
    const probe = createPublicClient({ transport: http(o.rpcUrl, { retryCount: 1, timeout: 5_000 }) });
    const rpc = redactRpcUrl(o.rpcUrl);
    const until = Date.now() + waitMs;
    let chainId: number;
    for (;;) {
      try {
        chainId = await probe.getChainId();
        break;
      } catch (err) {
        const message = `the chain at ${rpc} does not answer: ${chainErrorText(err as Error, o.rpcUrl)}`;
        // an HTTP answer (a wrong path, a refused key) is not a chain that is away
        const answered = err instanceof BaseError && err.walk((e) => e instanceof HttpRequestError && e.status !== undefined);
        if (answered || Date.now() + 1_000 > until) throw new Error(message);
        waiting(`${message}; trying again for up to ${Math.ceil((until - Date.now()) / 1000)} s`);
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
    const code = await probe.getCode({ address: o.ledger }).catch((err: Error) => {
      throw new Error(`the chain at ${rpc} did not give the ledger's code: ${chainErrorText(err, o.rpcUrl)}`);
    });
    if (!code || code === "0x") throw new Error(`no CreditLedger contract at ${o.ledger} on chain ${chainId} (${rpc})`);
    return new LedgerChain(o, chainId);
  }

  async escrow(user: Address): Promise<Escrow> {
    const read = { address: this.ledger, abi: CreditLedger.abi } as const;
    const [[deposited, spent, pendingWithdrawal, unlockAt], role] = await Promise.all([
      this.public.readContract({ ...read, functionName: "escrows", args: [user, this.coordinator] }),
      this.coordinatorRole(),
    ]);
    const escrow = { deposited, spent, pendingWithdrawal, unlockAt };
    if (!(await this.public.readContract({ ...read, functionName: "hasRole", args: [role, user] }))) return escrow;
    const peerAccepted = await this.public.readContract({ ...read, functionName: "accepted", args: [user, this.coordinator] });
    return { ...escrow, peerAccepted };
  }

  private role: Promise<Hex> | undefined;
  /** The ledger's COORDINATOR_ROLE id (a constant: read once). */
  private coordinatorRole(): Promise<Hex> {
    this.role ??= this.public
      .readContract({ address: this.ledger, abi: CreditLedger.abi, functionName: "COORDINATOR_ROLE" })
      .catch((err) => {
        this.role = undefined;
        throw err;
      });
    return this.role;
  }

  /** The last batch the chain has from this coordinator (0 before the first). */
  async lastBatch(): Promise<number> {
    return (await this.settlement()).lastBatch;
  }

  /** This coordinator's settlement record on chain. */
  async settlement(): Promise<{ lastBatch: number; totalSpent: bigint; totalEarnings: bigint }> {
    const [lastBatch, , totalSpent, totalEarnings] = await this.public.readContract({
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "settlements",
      args: [this.coordinator],
    });
    return { lastBatch: Number(lastBatch), totalSpent, totalEarnings };
  }

  /** The most spend one settlement may move, as governance set it. */
  async maxBatchSpend(): Promise<bigint> {
    return this.public.readContract({ address: this.ledger, abi: CreditLedger.abi, functionName: "maxBatchSpend" });
  }

  /** How long a user's withdrawal waits after they announce it (s). */
  async withdrawalNotice(): Promise<bigint> {
    return this.public.readContract({ address: this.ledger, abi: CreditLedger.abi, functionName: "withdrawalNotice" });
  }

  /** The time of the newest block (s). */
  async now(): Promise<bigint> {
    return (await this.public.getBlock({ blockTag: "latest" })).timestamp;
  }

  /** What this coordinator accepted owing a peer coordinator (federation clearing), as the chain has it. */
  async accepted(server: Address): Promise<bigint> {
    return this.public.readContract({
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "accepted",
      args: [this.coordinator, server],
    });
  }

  /** Posts what this coordinator accepts owing peer coordinators (cumulative) and waits until it is mined. */
  async accept(servers: Address[], cumulative: bigint[]): Promise<Hex> {
    const hash = await this.wallet.writeContract({
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "accept",
      args: [servers, cumulative],
    });
    const receipt = await this.public.waitForTransactionReceipt({ hash, timeout: 60_000 });
    if (receipt.status !== "success") throw new Error(`accepting what this site owes peer sites reverted (${hash})`);
    return hash;
  }

  async claimed(node: Address): Promise<bigint> {
    return this.public.readContract({
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "claimed",
      args: [this.coordinator, node],
    });
  }

  async credits(account: Address): Promise<bigint> {
    return this.public.readContract({ address: this.ledger, abi: CreditLedger.abi, functionName: "credits", args: [account] });
  }

  /**
   * A batch of this coordinator as the chain has it: the transaction that settled it (from the
   * BatchSettled event) and what it posted (decoded from its input when it called settle directly).
   */
  async findSettlement(batchId: number): Promise<{ hash: Hex; root: Hex; call?: BatchCall } | undefined> {
    const logs = await this.public.getContractEvents({
      address: this.ledger,
      abi: CreditLedger.abi,
      eventName: "BatchSettled",
      args: { coordinator: this.coordinator, batchId: BigInt(batchId) },
      fromBlock: 0n,
    });
    const log = logs[0];
    if (!log?.transactionHash || !log.args.earningsRoot) return undefined;
    const tx = await this.public.getTransaction({ hash: log.transactionHash });
    const decoded = (() => {
      try {
        return decodeFunctionData({ abi: CreditLedger.abi, data: tx.input });
      } catch {
        return undefined; // sent through another contract (a multisig): only the event speaks for it
      }
    })();
    const call: BatchCall | undefined =
      decoded?.functionName === "settle"
        ? {
            batchId: Number(decoded.args[0]),
            users: [...decoded.args[1]],
            cumulativeSpent: [...decoded.args[2]],
            earningsRoot: decoded.args[3],
            totalEarnings: decoded.args[4],
          }
        : undefined;
    return { hash: log.transactionHash, root: log.args.earningsRoot, call };
  }

  /** Checks the batch against the chain's state (reverts surface here, before anything is sent). */
  async simulateSettle(b: BatchCall) {
    const { request } = await this.public.simulateContract({
      account: this.wallet.account,
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "settle",
      args: [BigInt(b.batchId), b.users, b.cumulativeSpent, b.earningsRoot, b.totalEarnings],
    });
    return request;
  }

  /** Sends the settlement with an explicit nonce and fees; returns its hash as soon as the node has it. */
  async sendSettle(b: BatchCall, tx: { nonce: number; maxFeePerGas: bigint; maxPriorityFeePerGas: bigint; gas: bigint }): Promise<Hex> {
    return this.wallet.writeContract({
      address: this.ledger,
      abi: CreditLedger.abi,
      functionName: "settle",
      args: [BigInt(b.batchId), b.users, b.cumulativeSpent, b.earningsRoot, b.totalEarnings],
      ...tx,
    });
  }
}
