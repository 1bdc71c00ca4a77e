/**
 * A simulated node that speaks the real control protocol (registration, hello,
 * heartbeats, job frames) with no llama-server behind it: for fleet tests and
 * the control-plane benchmark.
 */

import { registerNode } from "@sharedllm/node";
import {
  CONTROL_PATH,
  CONTROL_PROTOCOL_VERSION,
  type CoordinatorFrame,
  encodeChunkFrame,
  type JobStart,
  type NodeFrame,
  type ReceiptRequest,
  receiptFromWire,
  type ServedModel,
  type Usage,
  workReceiptTypedData,
} from "@sharedllm/protocol";
import { generatePrivateKey, type LocalAccount, type PrivateKeyAccount, privateKeyToAccount } from "viem/accounts";
import WebSocket from "ws";

export type SimJobHandler = (job: JobStart, send: (f: NodeFrame) => void) => void;

/** Answers every job with a short stream (as a node does, whether or not its client asked for one): two tokens, then usage. */
export const echoJob: SimJobHandler = (job, send) =>
  streamWords(job, send, ["sim", "ulated"], { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 });

/** Streams one event per word, each one token (ids 1, 2, ...), then ends the job with `usage`. */
export function streamWords(job: JobStart, send: (f: NodeFrame) => void, words: readonly string[], usage: Usage): void {
  for (const [i, word] of words.entries()) {
    const choice = job.kind === "chat" ? { index: 0, delta: { content: word } } : { index: 0, text: word };
    send({ type: "job.chunk", jobId: job.jobId, data: JSON.stringify({ choices: [choice] }), tokens: [i + 1] });
  }
  send({ type: "job.end", jobId: job.jobId, usage });
}

/**
 * Streams ` t1` ... ` t<count>` (token ids 1..count), one every `everyMs`, then ends the job. A job
 * continued from another node (docs/continuation.md) gets the rest, as a plain completion's events.
 */
export const countTo =
  (count: number, everyMs: number): SimJobHandler =>
  (job, send) => {
    const resumed = job.resume?.tokens.length ?? 0;
    let i = resumed;
    const timer = setInterval(() => {
      if (i >= count) {
        clearInterval(timer);
        const usage = { prompt_tokens: 3 + resumed, completion_tokens: count - resumed, total_tokens: 3 + count };
        send({ type: "job.end", jobId: job.jobId, usage, ...(resumed && { resumed }) });
        return;
      }
      i++;
      const choice = job.resume ? { index: 0, text: ` t${i}` } : { index: 0, delta: { content: ` t${i}` } };
      send({ type: "job.chunk", jobId: job.jobId, data: JSON.stringify({ choices: [choice] }), tokens: [i] });
    }, everyMs);
  };

/** Answers every receipt request by signing the receipt as proposed, with `account` (an honest node). */
export const signsReceipts =
  (account: LocalAccount) =>
  (req: ReceiptRequest, send: (f: NodeFrame) => void): void =>
    void account
      .signTypedData(workReceiptTypedData(receiptFromWire(req.receipt), req.domain))
      .then((signature) => send({ type: "receipt", receipt: req.receipt, signature }));

export class SimNode {
  readonly account: PrivateKeyAccount;
  readonly id: string;
  ws: WebSocket | undefined;
  heartbeats = true;
  /** when it last sent a heartbeat (ms epoch; 0 before the first) */
  lastHeartbeatAt = 0;
  jobsSeen = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly o: {
      coordinatorUrl: string;
      joinToken: string;
      models?: string[];
      /** full model entries to announce (sources, sizes), instead of `models` */
      served?: ServedModel[];
      slots?: number;
      onJob?: SimJobHandler;
      /** extra hello fields (role, tunnel) */
      hello?: Record<string, unknown>;
      /** receipt requests (paid jobs); default: ignored */
      onReceiptRequest?: (req: ReceiptRequest, send: (f: NodeFrame) => void) => void;
      /** every other frame from the coordinator (cluster sessions, errors) */
      onFrame?: (frame: CoordinatorFrame, send: (f: NodeFrame) => void) => void;
      /** the node's key; default: a new one (the same key again is the same node coming back) */
      account?: PrivateKeyAccount;
      /** the free memory its heartbeats report (default 1 GB); a node with room may be asked to load a model, which a sim node never does */
      freeMemoryBytes?: number;
      /** PEM certificate(s) to trust for an https coordinator */
      coordinatorCa?: string;
      /** the address its control channel connects from (127.0.0.2: another machine, as a proxy sees it) */
      localAddress?: string;
    },
  ) {
    this.account = o.account ?? privateKeyToAccount(generatePrivateKey());
    this.id = this.account.address.toLowerCase();
  }

  /** Registers, connects and says hello; resolves on welcome. */
  async start(): Promise<void> {
    const { sessionToken } = await registerNode({
      coordinatorUrl: this.o.coordinatorUrl,
      joinToken: this.o.joinToken,
      account: this.account,
      coordinatorCa: this.o.coordinatorCa,
    });
    const ws = new WebSocket(this.o.coordinatorUrl.replace(/^http/, "ws") + CONTROL_PATH, {
      headers: { authorization: `Bearer ${sessionToken}` },
      perMessageDeflate: false,
      ca: this.o.coordinatorCa,
      localAddress: this.o.localAddress,
    });
    this.ws = ws;
    const send = (f: NodeFrame) => {
      if (ws.readyState === WebSocket.OPEN)
        ws.send(f.type === "job.chunk" ? encodeChunkFrame(f.jobId, f.data, f.tokens) : JSON.stringify(f));
    };
    await new Promise<void>((resolve, reject) => {
      ws.once("error", reject);
      ws.once("open", () =>
        ws.send(
          JSON.stringify({
            type: "hello",
            protocol: CONTROL_PROTOCOL_VERSION,
            nodeId: this.id,
            engine: { tag: "sim", variant: "cpu" },
            models: this.o.served ?? (this.o.models ?? ["sim-model"]).map((id) => ({ id, sha256: "0".repeat(64), contextSize: 2048 })),
            slots: this.o.slots ?? 2,
            ...this.o.hello,
          }),
        ),
      );
      ws.on("message", (data) => {
        const frame = JSON.parse(data.toString()) as CoordinatorFrame;
        if (frame.type === "welcome") {
          this.timer = setInterval(() => {
            if (this.heartbeats) {
              this.lastHeartbeatAt = Date.now();
              send({
                type: "heartbeat",
                load: 0.1,
                freeMemoryBytes: this.o.freeMemoryBytes ?? 1e9,
                activeJobs: 0,
                loadedModels: this.o.models ?? ["sim-model"],
                tokensPerSecond: 42,
              });
            }
          }, frame.heartbeatIntervalMs);
          resolve();
        } else if (frame.type === "job.start") {
          this.jobsSeen++;
          (this.o.onJob ?? echoJob)(frame, send);
        } else if (frame.type === "receipt.request") {
          this.o.onReceiptRequest?.(frame, send);
        } else {
          this.o.onFrame?.(frame, send);
        }
      });
    });
    ws.once("close", () => clearInterval(this.timer));
  }

  /** Sends any frame on the control channel. */
  send(frame: NodeFrame): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  stop(): void {
    clearInterval(this.timer);
    this.ws?.terminate();
  }
}
