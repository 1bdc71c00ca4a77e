/**
 * The SharedLLM client: the coordinator's paths, typed from its OpenAPI spec (src/schema.ts) and
 * called with openapi-fetch, and the flows that take more than one call: Sign-In with Ethereum,
 * API keys, a wallet's account, buying credits and claiming a node's earnings on the chain the
 * coordinator names, and an official OpenAI client for the generation endpoints. Credits are
 * bigints (the coordinator sends decimal strings: JSON has no bigint).
 */
import { CreditLedger } from "@sharedllm/contracts";
import type {
  AccountResponse,
  ApiKeyListing,
  EarningsResponse,
  FederationResponse,
  KeyPolicy,
  LedgerResponse,
  NetworkResponse,
  NewApiKeyResponse,
} from "@sharedllm/protocol";
import OpenAI from "openai";
import createClient, { type Client } from "openapi-fetch";
import { type Address, createPublicClient, type Hash, type Hex, http, type Account as ViemAccount, type WalletClient } from "viem";
import { createSiweMessage } from "viem/siwe";
import { SharedLLMError } from "./errors.js";
import type { paths } from "./schema.js";

export interface SharedLLMOptions {
  /** the coordinator's origin, e.g. `http://127.0.0.1:8080` */
  url: string;
  /** a session token (`sess_...`, from signIn) or a wallet-bound API key (`sk-...`) */
  token?: string;
  fetch?: typeof fetch;
}

/** `GET /v1/account`, credits as bigints */
export interface Account {
  address: Address;
  deposited: bigint;
  pendingWithdrawal: bigint;
  settledSpent: bigint;
  charged: bigint;
  held: bigint;
  available: bigint;
}

/** One key of `GET /v1/keys`, its credits as a bigint */
export type ApiKey = Omit<ApiKeyListing, "usage"> & { usage: Omit<ApiKeyListing["usage"], "credits"> & { credits: bigint } };

/** `GET /v1/ledger`, prices as bigints */
export type Ledger = Omit<LedgerResponse, "pricing"> & {
  pricing: { default: { prompt: bigint; completion: bigint }; models: Record<string, { prompt: bigint; completion: bigint }> };
};

/** `GET /v1/earnings/:address`, credits as bigints */
export type Earnings = Omit<EarningsResponse, "earned" | "pending" | "settled" | "claimed" | "claimable" | "setAside" | "claim"> & {
  earned: bigint;
  pending: bigint;
  settled: bigint;
  claimed: bigint;
  claimable: bigint;
  setAside: bigint;
  claim: { batchId: number; cumulative: bigint; proof: Hex[]; root: Hex } | null;
};

/** A wallet that can sign a message (a viem local account, or a wallet client's JSON-RPC account). */
type Signer = Pick<ViemAccount, "address"> & { signMessage?: (a: { message: string }) => Promise<Hex> };

const STATEMENT = "Sign in to SharedLLM";

/** The body of an openapi-fetch result, or the coordinator's error as a SharedLLMError. */
function unwrap<T>(r: { data?: T; error?: unknown; response: Response }): T {
  if (!r.response.ok || r.data === undefined) throw new SharedLLMError(r.response.status, r.error);
  return r.data;
}

/**
 * A client for one coordinator.
 * @example
 * const sdk = new SharedLLM({ url: "http://127.0.0.1:8080" });
 * await sdk.signIn(privateKeyToAccount(key));
 * const { key: secret } = await sdk.createKey("laptop");
 * const openai = sdk.openai(secret);
 */
export class SharedLLM {
  readonly url: string;
  /** every documented path, typed from the spec: `sdk.api.GET("/v1/models")` */
  readonly api: Client<paths>;
  /** the bearer token sent with each call: the session after signIn, or the one given */
  token: string | undefined;

  constructor(o: SharedLLMOptions) {
    this.url = new URL(o.url).origin;
    this.token = o.token;
    this.api = createClient<paths>({ baseUrl: this.url, fetch: o.fetch });
    this.api.use({
      onRequest: ({ request }) => {
        if (this.token && !request.headers.has("authorization")) request.headers.set("authorization", `Bearer ${this.token}`);
        return request;
      },
    });
  }

  /** `GET /v1/ledger`: the chain, the CreditLedger contract and the prices (404 when the coordinator runs without credits). */
  async ledger(): Promise<Ledger> {
    const l = unwrap(await this.api.GET("/v1/ledger")) as unknown as LedgerResponse;
    const price = (p: { prompt: string; completion: string }) => ({ prompt: BigInt(p.prompt), completion: BigInt(p.completion) });
    return {
      ...l,
      pricing: {
        default: price(l.pricing.default),
        models: Object.fromEntries(Object.entries(l.pricing.models).map(([m, p]) => [m, price(p)])),
      },
    };
  }

  /**
   * Signs in with Ethereum (EIP-4361): asks a nonce, signs the message viem's createSiweMessage
   * writes for this coordinator's origin and chain (as the CLI and the portal do), and keeps the
   * session token for the calls that follow. Returns the session.
   */
  async signIn(account: Signer, o: { statement?: string; expiresInMs?: number } = {}) {
    if (!account.signMessage) throw new TypeError("signIn needs an account that signs messages (a viem local account)");
    const { nonce, chainId } = unwrap(await this.api.GET("/v1/auth/nonce")) as { nonce: string; chainId: number };
    const url = new URL(this.url);
    const message = createSiweMessage({
      domain: url.host,
      address: account.address,
      statement: o.statement ?? STATEMENT,
      uri: url.origin,
      version: "1",
      chainId,
      nonce,
      expirationTime: new Date(Date.now() + (o.expiresInMs ?? 10 * 60_000)),
    });
    const signature = await account.signMessage({ message });
    const session = unwrap(await this.api.POST("/v1/auth/login", { body: { message, signature } })) as {
      token: string;
      address: Address;
      expiresAt: string;
    };
    this.token = session.token;
    return session;
  }

  /** Ends the session (`POST /v1/auth/logout`). */
  async signOut(): Promise<void> {
    unwrap(await this.api.POST("/v1/auth/logout"));
    this.token = undefined;
  }

  /** Creates an API key bound to the signed-in wallet; its secret (`key`) is shown this once. */
  async createKey(name: string, policy?: KeyPolicy): Promise<NewApiKeyResponse> {
    return unwrap(await this.api.POST("/v1/keys", { body: { name, policy } })) as unknown as NewApiKeyResponse;
  }

  /** The wallet's keys, newest first, with what each spent. */
  async listKeys(): Promise<ApiKey[]> {
    const { data } = unwrap(await this.api.GET("/v1/keys")) as { data: ApiKeyListing[] };
    return data.map((k) => ({ ...k, usage: { ...k.usage, credits: BigInt(k.usage.credits) } }));
  }

  /** Revokes one of the wallet's keys; calls with it answer 401 from then on. */
  async revokeKey(id: string): Promise<void> {
    unwrap(await this.api.DELETE("/v1/keys/{id}", { params: { path: { id } } }));
  }

  /** What the signed-in wallet (or the wallet-bound key's owner) can spend. */
  async account(): Promise<Account> {
    const a = unwrap(await this.api.GET("/v1/account")) as unknown as AccountResponse;
    return {
      address: a.address,
      deposited: BigInt(a.deposited),
      pendingWithdrawal: BigInt(a.pendingWithdrawal),
      settledSpent: BigInt(a.settledSpent),
      charged: BigInt(a.charged),
      held: BigInt(a.held),
      available: BigInt(a.available),
    };
  }

  /** The site's nodes and models (`GET /v1/network`). */
  async network(): Promise<NetworkResponse> {
    return unwrap(await this.api.GET("/v1/network")) as unknown as NetworkResponse;
  }

  /** The site's federation: peers, trust, credits owed (404 when federation is off). */
  async federation(): Promise<FederationResponse> {
    return unwrap(await this.api.GET("/v1/federation")) as unknown as FederationResponse;
  }

  /** What a node earned here, what is settled and claimable, and the Merkle proof a claim needs. */
  async earnings(address: Address): Promise<Earnings> {
    const e = unwrap(await this.api.GET("/v1/earnings/{address}", { params: { path: { address } } })) as unknown as EarningsResponse;
    return {
      ...e,
      earned: BigInt(e.earned),
      pending: BigInt(e.pending),
      settled: BigInt(e.settled),
      claimed: BigInt(e.claimed),
      claimable: BigInt(e.claimable),
      setAside: BigInt(e.setAside),
      claim: e.claim && { ...e.claim, cumulative: BigInt(e.claim.cumulative) },
    };
  }

  /** The ledger and a client to read its chain; refuses a wallet on another chain. */
  private async chain(wallet: WalletClient) {
    const ledger = await this.ledger();
    if (!wallet.account) throw new TypeError("the wallet client needs an account");
    const walletChain = await wallet.getChainId();
    if (walletChain !== ledger.chainId) {
      throw new TypeError(`the coordinator settles on chain ${ledger.chainId}; the wallet is on chain ${walletChain}`);
    }
    const publicClient = createPublicClient({ transport: http(ledger.rpcUrl) });
    const send = async (request: {
      functionName: "buy" | "deposit" | "claim";
      args: readonly unknown[];
      value?: bigint;
    }): Promise<Hash> => {
      const hash = await wallet.writeContract({
        address: ledger.ledger,
        abi: CreditLedger.abi,
        chain: null,
        account: wallet.account as ViemAccount,
        ...request,
      } as never);
      const receipt = await publicClient.waitForTransactionReceipt({ hash });
      if (receipt.status !== "success") throw new Error(`the ${request.functionName} transaction ${hash} reverted`);
      return hash;
    };
    return { ledger, publicClient, send, address: wallet.account.address };
  }

  /**
   * Buys `credits` with the chain's native coin straight into escrow for this coordinator
   * (CreditLedger.buy at its weiPerCredit), and waits for the transaction. The coordinator counts
   * the deposit once it sees it on chain.
   */
  async buyCredits(wallet: WalletClient, credits: bigint): Promise<Hash> {
    const c = await this.chain(wallet);
    const weiPerCredit = (await c.publicClient.readContract({
      address: c.ledger.ledger,
      abi: CreditLedger.abi,
      functionName: "weiPerCredit",
    } as never)) as bigint;
    return c.send({ functionName: "buy", args: [c.ledger.coordinator], value: credits * weiPerCredit });
  }

  /** Moves `credits` of the wallet's on-chain balance (bought or claimed) into escrow for this coordinator. */
  async deposit(wallet: WalletClient, credits: bigint): Promise<Hash> {
    const c = await this.chain(wallet);
    return c.send({ functionName: "deposit", args: [c.ledger.coordinator, credits] });
  }

  /** The wallet's credits on chain, outside any escrow. */
  async onChainCredits(wallet: WalletClient): Promise<bigint> {
    const c = await this.chain(wallet);
    return (await c.publicClient.readContract({
      address: c.ledger.ledger,
      abi: CreditLedger.abi,
      functionName: "credits",
      args: [c.address],
    } as never)) as bigint;
  }

  /**
   * Claims the wallet's settled, unclaimed node earnings with the proof `GET /v1/earnings` gives;
   * returns what was claimed (0n and no transaction when there is nothing to claim).
   */
  async claim(wallet: WalletClient): Promise<{ claimed: bigint; hash?: Hash }> {
    const c = await this.chain(wallet);
    const e = await this.earnings(c.address);
    if (!e.claim || e.claimable === 0n) return { claimed: 0n };
    const hash = await c.send({ functionName: "claim", args: [c.ledger.coordinator, c.address, e.claim.cumulative, e.claim.proof] });
    return { claimed: e.claimable, hash };
  }

  /** An official OpenAI client for this coordinator's OpenAI-compatible endpoints, paying with `key`. */
  openai(key: string, o: Omit<ConstructorParameters<typeof OpenAI>[0] & object, "apiKey" | "baseURL"> = {}): OpenAI {
    return new OpenAI({ ...o, apiKey: key, baseURL: `${this.url}/v1` });
  }
}
