/**
 * The tab as a node of the site (docs/browser-node.md). It makes a session key, has the wallet
 * sign once a delegation to it, registers, fetches and checks the model file, loads the engine,
 * and then speaks the control protocol as a native node does: hello with a browser capability
 * report, heartbeats, jobs streamed back, cancel, and the receipts it signs with the session key
 * (the coordinator credits the wallet). Stop, a closed tab or a lost connection ends the control
 * channel, and the coordinator takes the node out at once.
 */
import {
  type AvailabilityReason,
  BROWSER_REGISTER_PATH,
  type BrowserModel,
  type BrowserRegisterResponse,
  browserRegistrationMessage,
  type Capabilities,
  CONTROL_PATH,
  CONTROL_PROTOCOL_VERSION,
  CONTROL_SUBPROTOCOL,
  type CoordinatorFrame,
  coordinatorFrameSchema,
  type Delegation,
  delegationTypedData,
  encodeChunkFrame,
  type NodeFrame,
  parseFrame,
  promptHash,
  ReceiptSigner,
  signSiteRequestWeb,
  UNTOLD_TOKEN,
} from "@sharedllm/protocol";
import type { Address, Hex, TypedDataDefinition } from "viem";
import { generatePrivateKey, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import { type Backend, type BrowserCapabilities, browserCapabilities, Engine } from "./engine.js";
import { modelFile } from "./modelFile.js";

export type NodeState = "idle" | "starting" | "downloading" | "loading" | "serving" | "paused" | "stopped" | "failed";

export interface NodeStatus {
  state: NodeState;
  /** what is happening now, or why it failed */
  message?: string;
  nodeId?: string;
  model?: string;
  backend?: Backend;
  threads?: number;
  browser?: BrowserCapabilities;
  download?: { received: number; total: number };
  jobsServed: number;
  activeJobs: number;
  /** decode speed of the latest job, or of the measurement at start */
  tokensPerSecond: number;
  /** credits of the receipts signed this session */
  credits: bigint;
}

export interface StartOptions {
  wallet: Address;
  chainId: number;
  /** the wallet signs the delegation (EIP-712) */
  signDelegation: (typed: TypedDataDefinition) => Promise<Hex>;
  /** the site's join token, from its join link, when the coordinator asks for it */
  joinToken?: string;
  threads: number;
  webgpu: boolean;
}

/** How long the wallet's delegation runs: a working day and some. */
const DELEGATION_SECONDS = 24 * 3600;
const CONTEXT_SIZE = 2048;

export class BrowserNode {
  private status: NodeStatus = { state: "idle", jobsServed: 0, activeJobs: 0, tokensPerSecond: 0, credits: 0n };
  private abort = new AbortController();
  private engine?: Engine;
  private socket?: WebSocket;
  private heartbeat?: ReturnType<typeof setInterval>;
  private readonly jobs = new Map<string, AbortController>();
  private key?: PrivateKeyAccount;
  private signer?: ReceiptSigner;
  private model?: BrowserModel;

  constructor(private readonly onStatus: (s: NodeStatus) => void) {}

  private set(patch: Partial<NodeStatus>) {
    this.status = { ...this.status, ...patch };
    this.onStatus(this.status);
  }

  async start(o: StartOptions): Promise<void> {
    this.abort = new AbortController();
    const signal = this.abort.signal;
    try {
      this.set({ state: "starting", message: "Checking what this browser offers…" });
      const browser = await browserCapabilities();
      this.set({ browser, message: "Sign the delegation in your wallet: it lets this tab earn for you for a day." });
      this.key = privateKeyToAccount(generatePrivateKey());
      this.signer = new ReceiptSigner(this.key);
      const registered = await this.register(o);
      if (signal.aborted) return;
      const model = registered.models.at(-1);
      if (!model) throw new Error("This coordinator offers browser nodes no model small enough.");
      this.model = model;
      this.set({ nodeId: registered.nodeId, model: model.id, state: "downloading", message: `Fetching ${model.id}…` });
      const file = await modelFile(model, (received, total) => this.set({ download: { received, total } }), signal);
      this.set({ state: "loading", message: `Loading ${model.id}…` });
      const threads = browser.crossOriginIsolated ? Math.max(1, o.threads) : 1;
      this.engine = await Engine.load(file, { threads, webgpu: o.webgpu && !browser.webgpuUnusable, contextSize: CONTEXT_SIZE });
      if (signal.aborted) return void (await this.engine.unload());
      const tokensPerSecond = await this.engine.measure();
      this.set({ backend: this.engine.backend, threads: this.engine.threads, tokensPerSecond });
      await this.connect(registered.sessionToken, browser);
    } catch (err) {
      if (signal.aborted) return;
      await this.shutdown();
      this.set({ state: "failed", message: (err as Error).message });
    }
  }

  /** The wallet's delegation, the session key's proof, and (with a join link) the site's HMAC. */
  private async register(o: StartOptions): Promise<BrowserRegisterResponse> {
    const key = this.key as PrivateKeyAccount;
    const delegation: Delegation = {
      wallet: o.wallet,
      sessionKey: key.address,
      coordinator: location.origin,
      chainId: o.chainId,
      expiresAt: Math.floor(Date.now() / 1000) + DELEGATION_SECONDS,
    };
    const walletSignature = await o.signDelegation(delegationTypedData(delegation) as TypedDataDefinition);
    const fresh = await signSiteRequestWeb(o.joinToken, "POST", BROWSER_REGISTER_PATH, "");
    const timestamp = fresh["x-sharedllm-timestamp"] as string;
    const nonce = fresh["x-sharedllm-nonce"] as string;
    const message = browserRegistrationMessage({
      sessionKey: key.address,
      wallet: o.wallet,
      coordinator: location.origin,
      chainId: o.chainId,
      timestamp,
      nonce,
    });
    const proof = await key.signMessage({ message });
    const body = JSON.stringify({ delegation, walletSignature, proof });
    const headers = await signSiteRequestWeb(o.joinToken, "POST", BROWSER_REGISTER_PATH, body, Number(timestamp), nonce);
    const res = await fetch(BROWSER_REGISTER_PATH, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
    if (!res.ok) {
      const e = (await res.json().catch(() => undefined)) as { error?: { message?: string } } | undefined;
      throw new Error(e?.error?.message ?? `The coordinator refused this tab (HTTP ${res.status}).`);
    }
    return (await res.json()) as BrowserRegisterResponse;
  }

  private connect(sessionToken: string, browser: BrowserCapabilities): Promise<void> {
    const engine = this.engine as Engine;
    const model = this.model as BrowserModel;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${CONTROL_PATH}`;
    const socket = new WebSocket(url, [CONTROL_SUBPROTOCOL, `bearer.${sessionToken}`]);
    this.socket = socket;
    return new Promise((resolve) => {
      socket.onopen = () => {
        const capabilities: Capabilities = {
          cpuModel: `browser (${navigator.userAgent.match(/(Chrome|Chromium|Firefox|Safari)\/[\d.]+/)?.[0] ?? "unknown"})`,
          cores: browser.hardwareConcurrency,
          threads: engine.threads,
          memoryBytes: browser.memoryBytes,
          gpu: browser.adapter
            ? `WebGPU ${browser.adapter.vendor} ${browser.adapter.architecture}${browser.adapter.isFallbackAdapter ? " (software)" : ""}${engine.backend === "wasm" ? ", unused" : ""}`
            : null,
          vramBytes: 0,
          freeDiskBytes: 0,
          engineVariant: `wllama-${engine.backend}`,
          tokensPerSecond: this.status.tokensPerSecond,
          measuredAt: new Date().toISOString(),
          browser: {
            backend: engine.backend,
            crossOriginIsolated: browser.crossOriginIsolated,
            adapter: browser.adapter && {
              vendor: browser.adapter.vendor,
              architecture: browser.adapter.architecture,
              description: browser.adapter.description,
              isFallbackAdapter: browser.adapter.isFallbackAdapter,
              shaderF16: browser.adapter.features.includes("shader-f16"),
              maxBufferSize: browser.adapter.maxBufferSize,
              maxStorageBufferBindingSize: browser.adapter.maxStorageBufferBindingSize,
            },
            ...(browser.webgpuUnusable && { webgpuUnusable: browser.webgpuUnusable }),
          },
        };
        this.send({
          type: "hello",
          protocol: CONTROL_PROTOCOL_VERSION,
          nodeId: (this.key as PrivateKeyAccount).address.toLowerCase(),
          engine: { tag: "wllama", variant: engine.backend },
          models: [{ id: model.id, sha256: model.sha256, contextSize: CONTEXT_SIZE, sizeBytes: model.sizeBytes }],
          slots: 1,
          capabilities,
        });
      };
      socket.onmessage = (e) => {
        const parsed = parseFrame(coordinatorFrameSchema, String(e.data));
        if (parsed.ok) this.onFrame(parsed.frame, resolve);
      };
      socket.onclose = (e) => {
        resolve();
        const wasServing = this.status.state === "serving" || this.status.state === "paused";
        void this.shutdown().then(() => {
          if (this.status.state === "stopped") return;
          if (this.status.state === "failed") return;
          this.set({
            state: wasServing ? "stopped" : "failed",
            message: e.reason ? `The coordinator closed the connection: ${e.reason}` : "The connection to the coordinator was lost.",
          });
        });
      };
    });
  }

  private onFrame(frame: CoordinatorFrame, welcomed: () => void) {
    switch (frame.type) {
      case "welcome":
        this.heartbeat = setInterval(() => this.beat(), frame.heartbeatIntervalMs);
        this.set({ state: "serving", message: "Serving: this tab takes jobs from the network." });
        return welcomed();
      case "job.start":
        return void this.runJob(frame);
      case "job.cancel":
        return this.jobs.get(frame.jobId)?.abort();
      case "receipt.request":
        return void (this.signer as ReceiptSigner).sign(frame).then((r) => {
          this.send(r);
          if (r.signature) this.set({ credits: this.status.credits + BigInt(r.receipt.credits) });
        });
      case "audit.start":
        return this.send({ type: "audit.error", auditId: frame.auditId, message: "a browser node does not audit" });
      case "error":
        return this.set({ state: "failed", message: frame.message });
      default:
        return;
    }
  }

  private async runJob(job: Extract<CoordinatorFrame, { type: "job.start" }>) {
    const engine = this.engine;
    const model = this.model as BrowserModel;
    if (!engine) return this.send({ type: "job.error", jobId: job.jobId, message: "the tab is stopping", retryable: true });
    const ctl = new AbortController();
    this.jobs.set(job.jobId, ctl);
    this.set({ activeJobs: this.jobs.size });
    const streamed: number[] = [];
    const served = () => ({ modelSha256: model.sha256, promptHash: promptHash(job.request), output: streamed });
    const signer = this.signer as ReceiptSigner;
    const result = await engine.run(
      job,
      (f) => {
        if (f.type === "job.chunk") {
          if (typeof f.tokens === "number") for (let i = 0; i < f.tokens; i++) streamed.push(UNTOLD_TOKEN);
          else streamed.push(...f.tokens);
        }
        if (f.type === "job.end") signer.record(job.jobId, served(), f.usage);
        if (f.type === "job.error" && streamed.length > 0) signer.recordPart(job.jobId, served());
        this.send(f);
      },
      ctl.signal,
    );
    this.jobs.delete(job.jobId);
    this.set({
      activeJobs: this.jobs.size,
      ...(ctl.signal.aborted ? {} : { jobsServed: this.status.jobsServed + 1 }),
      ...(result.tokensPerSecond ? { tokensPerSecond: result.tokensPerSecond } : {}),
    });
  }

  private beat() {
    this.send({
      type: "heartbeat",
      load: 0,
      freeMemoryBytes: 0,
      activeJobs: this.jobs.size,
      loadedModels: this.model ? [this.model.id] : [],
      tokensPerSecond: this.status.tokensPerSecond,
    });
  }

  private send(f: NodeFrame) {
    if (this.socket?.readyState !== WebSocket.OPEN) return;
    this.socket.send(f.type === "job.chunk" ? encodeChunkFrame(f.jobId, f.data, f.tokens) : JSON.stringify(f));
  }

  /** Takes jobs or not (the owner's throttle): jobs in flight finish. */
  setAccepting(accepting: boolean, reason: AvailabilityReason) {
    if (this.status.state !== "serving" && this.status.state !== "paused") return;
    this.send({ type: "availability", accepting, reason });
    this.set({
      state: accepting ? "serving" : "paused",
      message: accepting ? "Serving: this tab takes jobs from the network." : `Paused (${reason.replace("_", " ")}).`,
    });
  }

  /** Stop: the control channel closes (the coordinator takes the node out at once), the engine is freed. */
  async stop(): Promise<void> {
    this.abort.abort();
    this.set({ state: "stopped", message: "Stopped." });
    await this.shutdown();
  }

  private async shutdown() {
    clearInterval(this.heartbeat);
    for (const j of this.jobs.values()) j.abort();
    this.jobs.clear();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "stopped");
    this.socket = undefined;
    const engine = this.engine;
    this.engine = undefined;
    await engine?.unload();
  }
}
