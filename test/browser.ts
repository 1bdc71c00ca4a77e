/// <reference lib="dom" />
/**
 * A real browser for portal tests: Debian's Chromium driven by playwright-core, with a test
 * wallet injected as `window.ethereum` (EIP-1193). The wallet signs for real, in this process,
 * with a dev-chain account (viem): messages with personal_sign, transactions sent raw to the chain;
 * reads go to the chain's RPC. A test can make it reject a method, or sit on another chain.
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { type Account, createWalletClient, defineChain, type Hex, http, toHex } from "viem";

export const CHROMIUM = "/usr/bin/chromium";
export const SCREENSHOTS = join(import.meta.dirname, "..", "test-artifacts", "screenshots");

/**
 * Debian's Chromium, headless. `webgpu`: with WebGPU (on these machines, the SwiftShader software
 * adapter) instead of no GPU at all.
 */
export function launchBrowser(o: { webgpu?: boolean } = {}): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      o.webgpu ? "--enable-unsafe-webgpu" : "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

interface RpcError {
  code: number;
  message: string;
}

export class TestWallet {
  /** the chain the wallet says it is on (a test may put it elsewhere) */
  chainId: number;
  /** methods the "user" rejects (EIP-1193 error 4001) */
  readonly rejects = new Set<string>();

  constructor(
    readonly account: Account,
    readonly rpcUrl: string,
    readonly ledgerChainId: number,
  ) {
    this.chainId = ledgerChainId;
  }

  get address(): string {
    return this.account.address;
  }

  private async rpc(method: string, params: unknown[]): Promise<unknown> {
    const res = await fetch(this.rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
    });
    const body = (await res.json()) as { result?: unknown; error?: RpcError };
    if (body.error) throw body.error;
    return body.result;
  }

  /** One EIP-1193 request from the page. */
  async handle(method: string, params: unknown[]): Promise<{ result?: unknown; error?: RpcError }> {
    try {
      if (this.rejects.has(method)) return { error: { code: 4001, message: "User rejected the request." } };
      switch (method) {
        case "eth_requestAccounts":
        case "eth_accounts":
          return { result: [this.account.address] };
        case "eth_chainId":
          return { result: toHex(this.chainId) };
        case "net_version":
          return { result: String(this.chainId) };
        case "wallet_switchEthereumChain": {
          const id = Number((params[0] as { chainId: Hex }).chainId);
          if (id !== this.ledgerChainId) return { error: { code: 4902, message: `unknown chain ${id}` } };
          this.chainId = id;
          return { result: null };
        }
        case "eth_signTypedData_v4": {
          const [, json] = params as [Hex, string];
          const typed = JSON.parse(json) as Parameters<NonNullable<Account["signTypedData"]>>[0] & { types: Record<string, unknown> };
          const { EIP712Domain: _, ...types } = typed.types;
          return { result: await this.account.signTypedData?.({ ...typed, types } as typeof typed) };
        }
        case "personal_sign": {
          const [message] = params as [Hex, string];
          return { result: await this.account.signMessage?.({ message: { raw: message } }) };
        }
        case "eth_sendTransaction": {
          if (this.chainId !== this.ledgerChainId) return { error: { code: -32000, message: "the wallet is on another chain" } };
          const tx = params[0] as { to: Hex; data?: Hex; value?: Hex; gas?: Hex };
          const chain = defineChain({
            id: this.ledgerChainId,
            name: "dev",
            nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
            rpcUrls: { default: { http: [this.rpcUrl] } },
          });
          const wallet = createWalletClient({ account: this.account, chain, transport: http(this.rpcUrl) });
          const hash = await wallet.sendTransaction({
            to: tx.to,
            data: tx.data,
            value: tx.value ? BigInt(tx.value) : undefined,
            gas: tx.gas ? BigInt(tx.gas) : undefined,
          });
          return { result: hash };
        }
        default:
          return { result: await this.rpc(method, params) };
      }
    } catch (err) {
      const e = err as { code?: number; message?: string; details?: string; shortMessage?: string };
      return {
        error: { code: typeof e.code === "number" ? e.code : -32000, message: e.details ?? e.shortMessage ?? e.message ?? String(err) },
      };
    }
  }
}

/** The page side of the wallet: an EIP-1193 provider that forwards to the test process. */
const PROVIDER_SCRIPT = () => {
  const listeners: Record<string, ((arg: unknown) => void)[]> = {};
  const emit = (event: string, arg: unknown) => {
    for (const f of listeners[event] ?? []) f(arg);
  };
  const w = window as unknown as {
    ethereum: unknown;
    __wallet: (method: string, params: unknown[]) => Promise<{ result?: unknown; error?: { code: number; message: string } }>;
  };
  w.ethereum = {
    isMetaMask: false,
    on(event: string, f: (arg: unknown) => void) {
      listeners[event] = [...(listeners[event] ?? []), f];
    },
    removeListener(event: string, f: (arg: unknown) => void) {
      listeners[event] = (listeners[event] ?? []).filter((g) => g !== f);
    },
    async request({ method, params }: { method: string; params?: unknown[] }) {
      const r = await w.__wallet(method, params ?? []);
      if (r.error) throw Object.assign(new Error(r.error.message), { code: r.error.code });
      if (method === "wallet_switchEthereumChain") emit("chainChanged", (params?.[0] as { chainId?: string } | undefined)?.chainId);
      if (method === "eth_requestAccounts") emit("connect", { chainId: await (await w.__wallet("eth_chainId", [])).result });
      return r.result;
    },
  };
};

export interface Portal {
  context: BrowserContext;
  page: Page;
  /** console errors and uncaught page errors seen so far */
  errors: string[];
  screenshot(name: string): Promise<void>;
}

/** A fresh browser context (its own storage) with the wallet injected, at the portal. */
export async function openPortal(browser: Browser, url: string, wallet: TestWallet | undefined, width = 1280): Promise<Portal> {
  const context = await browser.newContext({ viewport: { width, height: width < 600 ? 812 : 860 } });
  if (wallet) {
    await context.exposeFunction("__wallet", (method: string, params: unknown[]) => wallet.handle(method, params));
    await context.addInitScript(PROVIDER_SCRIPT);
  }
  const page = await context.newPage();
  const errors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${m.text()} (${m.location().url})`);
  });
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  return {
    context,
    page,
    errors,
    async screenshot(name) {
      await mkdir(SCREENSHOTS, { recursive: true });
      await page.screenshot({ path: join(SCREENSHOTS, `${name}-${width}.png`), fullPage: true });
    },
  };
}

/**
 * After a test: when it failed, what the user last saw (`last`, the newest portal it opened) is
 * kept: a screenshot, and the page's text as its accessibility tree, with the page's errors.
 */
export async function reportPortalFailure(ctx: { task: { name: string; result?: { state?: string } } }, last: Portal | undefined) {
  if (ctx.task.result?.state !== "fail" || !last) return;
  await last.screenshot(`failed-${ctx.task.name.slice(0, 40).replaceAll(/\W+/g, "-")}`).catch(() => {});
  const text = await last.page
    .locator("body")
    .ariaSnapshot()
    .catch(() => "");
  process.stderr.write(`page at failure: ${last.page.url()}\n${text}\nerrors: ${last.errors.join("\n")}\n`);
}
