/**
 * The node's end of the control channel: dials the coordinator's WebSocket,
 * says hello, runs the jobs it is sent, and reconnects with exponential back-off
 * and jitter whenever the connection drops. Jobs in flight when the channel drops
 * are aborted: the coordinator has already failed them to their clients (audits too). Frames
 * from the coordinator are checked against their schemas first: one that does not
 * parse is logged and not acted on.
 */
import {
  type AuditStart,
  type Availability,
  ChannelRefused,
  CLOSE_REFUSED,
  type ClusterMembers,
  CONTROL_PATH,
  CONTROL_PROTOCOL_VERSION,
  type ControlChannel,
  type CoordinatorFrame,
  coordinatorFrameSchema,
  encodeChunkFrame,
  type Heartbeat,
  type Hello,
  type JobStart,
  type ModelLoad,
  type NodeFrame,
  parseFrame,
  type ReceiptFrame,
  type ReceiptRequest,
  type TunnelSessionFrame,
} from "@sharedllm/protocol";
import { webSocketChannel } from "@sharedllm/protocol/node";
import type { Logger } from "pino";
import WebSocket from "ws";

/** Where the session token for the WebSocket upgrade comes from (registration). */
export interface SessionCredentials {
  get(): Promise<string>;
  /** the coordinator no longer accepts the current token: get() must register again */
  invalidate(): void;
}

export interface ControlClientOptions {
  coordinatorUrl: string;
  /** PEM certificate(s) to trust for a wss coordinator (its own self-signed one); default: the system's CAs */
  coordinatorCa?: string;
  credentials: SessionCredentials;
  hello: () => Pick<Hello, "nodeId" | "engine" | "models" | "slots" | "capabilities" | "role" | "tunnel" | "auditor">;
  /** the node's state for each heartbeat */
  status: () => Omit<Heartbeat, "type" | "activeJobs">;
  runJob: (job: JobStart, send: (f: NodeFrame) => void, signal: AbortSignal) => Promise<void>;
  /** an auditor scores another node's output (answered through `send`); absent: the node refuses audits */
  runAudit?: (audit: AuditStart, send: (f: NodeFrame) => void, signal: AbortSignal) => Promise<void>;
  /** the coordinator asks this node to pull and serve a model; reply with the new model list */
  loadModel: (frame: ModelLoad, reply: (f: NodeFrame) => void) => void;
  /** the coordinator proposes a work receipt for a finished paid job: sign it or say why not */
  signReceipt: (frame: ReceiptRequest) => Promise<ReceiptFrame>;
  /** cluster frames: a worker's tunnel sessions (answered through `send`), a head's members */
  onClusterFrame?: (frame: TunnelSessionFrame | ClusterMembers, send: (f: NodeFrame) => void) => void;
  logger: Logger;
  /** opens the channel with a session token; default: the coordinator's WebSocket at coordinatorUrl */
  dial?: (sessionToken: string) => Promise<ControlChannel>;
  /** first reconnect delay; doubles up to maxBackoffMs (default 4 s), with +-50% jitter */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** how long the default dial's opening handshake may take; default DIAL_TIMEOUT_MS */
  dialTimeoutMs?: number;
}

export class ControlClient {
  private channel: ControlChannel | undefined;
  private readonly jobs = new Map<string, AbortController>();
  private readonly audits = new Map<string, AbortController>();
  private closed = false;
  private attempt = 0;
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private availability: { accepting: boolean; reason: Availability["reason"] } = { accepting: true, reason: "resumed" };
  private connectedOnce: Promise<void>;
  private markConnected!: () => void;
  connected = false;

  constructor(private readonly o: ControlClientOptions) {
    this.connectedOnce = new Promise((r) => {
      this.markConnected = r;
    });
  }

  /** Starts dialling; resolves once the coordinator has welcomed this node (first time). */
  start(): Promise<void> {
    void this.dial();
    return this.connectedOnce;
  }

  get activeJobs(): number {
    return this.jobs.size;
  }

  /**
   * Tells the coordinator whether to send new jobs; remembered across reconnects. `handOff`: the
   * jobs in flight are given up now (aborted here, with no frame for them; the coordinator hands
   * them on).
   */
  setAvailability(accepting: boolean, reason: Availability["reason"], handOff = false): void {
    this.availability = { accepting, reason };
    this.sendFrame({ type: "availability", accepting, reason, ...(handOff && { handOff }) });
    if (!handOff) return;
    for (const ctl of this.jobs.values()) ctl.abort();
    this.jobs.clear();
  }

  get accepting(): boolean {
    return this.availability.accepting;
  }

  /** Resolves once no job is in flight (or after timeoutMs); true if drained. */
  async drained(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.jobs.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    return this.jobs.size === 0;
  }

  /** Leaves the site: the coordinator forgets this node's sessions; the channel closes. */
  async leave(): Promise<void> {
    this.sendFrame({ type: "leave" });
    await this.close();
  }

  /** Sends a frame now if connected (frames are not queued across reconnects). */
  sendFrame(f: NodeFrame): void {
    if (this.channel?.open && this.connected) this.channel.send(JSON.stringify(f));
  }

  private async dial(): Promise<void> {
    if (this.closed) return;
    let token: string;
    try {
      token = await this.o.credentials.get();
    } catch (err) {
      this.o.logger.error({ err: (err as Error).message }, "cannot register with the coordinator; retrying");
      return this.scheduleReconnect();
    }
    if (this.closed) return;
    let channel: ControlChannel;
    try {
      channel = await (
        this.o.dial ??
        ((t: string) => dialWebSocket(this.o.coordinatorUrl, t, this.o.dialTimeoutMs ?? DIAL_TIMEOUT_MS, this.o.coordinatorCa))
      )(token);
    } catch (err) {
      if (err instanceof ChannelRefused) {
        const expired = err.status === 401;
        if (expired) this.o.credentials.invalidate();
        this.o.logger.warn(
          { status: err.status },
          expired ? "control channel session refused; registering again" : "control channel refused",
        );
      } else this.o.logger.debug({ err: (err as Error).message }, "control channel error");
      return this.scheduleReconnect();
    }
    if (this.closed) return channel.close(1000, "node stopping");
    this.channel = channel;
    channel.onMessage((text) => {
      const parsed = parseFrame(coordinatorFrameSchema, text);
      // acted on by no one: a coordinator that sends it has a bug or is not one
      if (!parsed.ok) return this.o.logger.error({ reason: parsed.reason }, "refused a frame from the coordinator");
      this.onFrame(channel, parsed.frame);
    });
    channel.onClose((code, reason) => {
      if (this.channel === channel) this.channel = undefined;
      if (this.connected && !this.closed) this.o.logger.warn({ code, reason }, "control channel closed");
      this.connected = false;
      clearInterval(this.heartbeat);
      for (const ctl of [...this.jobs.values(), ...this.audits.values()]) ctl.abort();
      this.jobs.clear();
      this.audits.clear();
      if (code === CLOSE_REFUSED) this.o.logger.error({ reason }, "coordinator refused this node");
      this.scheduleReconnect();
    });
    const { accepting, reason } = this.availability;
    const hello: Hello = { type: "hello", protocol: CONTROL_PROTOCOL_VERSION, ...this.o.hello(), accepting, ...(!accepting && { reason }) };
    channel.send(JSON.stringify(hello));
  }

  private onFrame(channel: ControlChannel, frame: CoordinatorFrame): void {
    switch (frame.type) {
      case "welcome":
        this.attempt = 0;
        this.connected = true;
        clearInterval(this.heartbeat);
        this.heartbeat = setInterval(() => {
          const beat: Heartbeat = { type: "heartbeat", ...this.o.status(), activeJobs: this.jobs.size };
          if (channel.open) channel.send(JSON.stringify(beat));
        }, frame.heartbeatIntervalMs);
        this.o.logger.info({ nodeId: frame.nodeId }, "connected to coordinator");
        this.markConnected();
        return;
      case "job.start": {
        const ctl = new AbortController();
        this.jobs.set(frame.jobId, ctl);
        const send = (f: NodeFrame) => {
          if (!channel.open) return;
          channel.send(f.type === "job.chunk" ? encodeChunkFrame(f.jobId, f.data, f.tokens) : JSON.stringify(f));
        };
        this.o
          .runJob(frame, send, ctl.signal)
          .catch((err: Error) => {
            this.o.logger.error({ err, jobId: frame.jobId }, "job crashed");
            send({ type: "job.error", jobId: frame.jobId, message: "internal node error", retryable: false });
          })
          .finally(() => this.jobs.delete(frame.jobId));
        return;
      }
      case "audit.start":
        this.onAudit(channel, frame);
        return;
      case "audit.cancel":
        this.audits.get(frame.auditId)?.abort();
        this.audits.delete(frame.auditId);
        return;
      case "model.load":
        this.o.loadModel(frame, (f) => this.sendFrame(f));
        return;
      case "receipt.request":
        void this.o
          .signReceipt(frame)
          .then((f) => this.sendFrame(f))
          .catch((err: Error) => this.o.logger.error({ err: err.message, jobId: frame.jobId }, "signing a receipt failed"));
        return;
      case "tunnel.session":
      case "cluster.members":
        this.o.onClusterFrame?.(frame, (f) => this.sendFrame(f));
        return;
      case "job.cancel":
        this.jobs.get(frame.jobId)?.abort();
        this.jobs.delete(frame.jobId);
        return;
      case "error":
        this.o.logger.error({ message: frame.message }, "coordinator reported an error");
        return;
    }
  }

  private onAudit(channel: ControlChannel, frame: AuditStart): void {
    const send = (f: NodeFrame) => {
      if (channel.open) channel.send(JSON.stringify(f));
    };
    if (!this.o.runAudit) {
      send({ type: "audit.error", auditId: frame.auditId, message: "this node does not audit (it was not started with --auditor)" });
      return;
    }
    this.audits.get(frame.auditId)?.abort();
    const ctl = new AbortController();
    this.audits.set(frame.auditId, ctl);
    this.o
      .runAudit(frame, send, ctl.signal)
      .catch((err: Error) => {
        this.o.logger.error({ err, auditId: frame.auditId }, "audit crashed");
        if (!ctl.signal.aborted) send({ type: "audit.error", auditId: frame.auditId, message: "internal node error" });
      })
      .finally(() => {
        if (this.audits.get(frame.auditId) === ctl) this.audits.delete(frame.auditId);
      });
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    // capped so that a node finds a restarted coordinator within seconds
    const base = Math.min((this.o.backoffMs ?? 250) * 2 ** this.attempt, this.o.maxBackoffMs ?? 4_000);
    this.attempt++;
    const delay = base * (0.5 + Math.random());
    this.timer = setTimeout(() => void this.dial(), delay);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    for (const ctl of [...this.jobs.values(), ...this.audits.values()]) ctl.abort();
    const channel = this.channel;
    if (channel?.open) {
      await new Promise<void>((r) => {
        channel.onClose(() => r());
        channel.close(1000, "node stopping");
      });
    }
  }
}

/**
 * How long the opening handshake may take: a coordinator that accepted the connection while it
 * was going down may never answer, and the node must then dial again, not wait for ever.
 */
export const DIAL_TIMEOUT_MS = 5_000;

/**
 * Dials the coordinator's control WebSocket (wss for an https coordinator, its certificate verified
 * against the system's CAs or `ca`); resolves once it is open, or fails after `timeoutMs`.
 */
function dialWebSocket(coordinatorUrl: string, sessionToken: string, timeoutMs: number, ca?: string): Promise<ControlChannel> {
  const url = new URL(CONTROL_PATH, coordinatorUrl.replace(/^http/, "ws"));
  const ws = new WebSocket(url, {
    headers: { authorization: `Bearer ${sessionToken}` },
    perMessageDeflate: false,
    handshakeTimeout: timeoutMs,
    ...(ca && { ca }),
  });
  return new Promise((resolve, reject) => {
    ws.once("unexpected-response", (_req, res) => {
      reject(new ChannelRefused(res.statusCode ?? 0, `the coordinator answered HTTP ${res.statusCode}`));
      ws.terminate();
    });
    ws.on("error", reject);
    ws.once("open", () => {
      // later errors end in "close", which the channel reports
      ws.removeListener("error", reject).on("error", () => {});
      resolve(webSocketChannel(ws));
    });
  });
}
