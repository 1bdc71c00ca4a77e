/**
 * A job's response: a streamed job as server-sent events written to the raw response (the
 * node's chunks relayed unchanged, `[DONE]` at the end, an OpenAI error event when the job fails
 * mid-stream); a whole response as the handler's JSON body. A job that fails before its first
 * chunk is answered as an ordinary HTTP error.
 */
import type { ServerResponse } from "node:http";
import type { ApiError } from "@sharedllm/protocol";
import type { FastifyReply } from "fastify";
import type { JobOutput } from "../jobs/job.js";
import { withRequiredFields } from "../openaiFields.js";

/** Response header naming the serving unit of the request. */
export const NODE_HEADER = "x-sharedllm-node";

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  connection: "keep-alive",
  "x-accel-buffering": "no",
};

/**
 * The most bytes of a stream written and not yet taken by its client (over what the kernel's
 * socket buffer holds): a client that stops reading is dropped there, as one that left, and its
 * job is cancelled, so neither this process nor the node keeps producing for it. A client that
 * reads at all is far below it: a token's event is a few hundred bytes.
 */
export const MAX_UNSENT_STREAM_BYTES = 1024 * 1024;

/**
 * The output of a job answering `reply`: `resolve` hears when the response is over (with the body
 * fastify is to send, or nothing when the stream was written here), `reject` when it is an HTTP error.
 */
export function jobResponse(reply: FastifyReply, resolve: (body?: unknown) => void, reject: (err: ApiError) => void): JobOutput {
  const raw = reply.raw;
  const events = new EventWriter(raw, () => {
    reply.log.warn(
      { unsentBytes: raw.socket?.writableLength },
      "the client stopped reading its stream; dropping it and cancelling its job",
    );
    raw.socket?.destroy();
  });
  let open = false;
  const start = (unit: string) => {
    open = true;
    reply.hijack();
    raw.socket?.setNoDelay(true);
    raw.writeHead(200, { ...SSE_HEADERS, [NODE_HEADER]: unit });
  };
  return {
    open(unit, data) {
      start(unit);
      raw.write(`data: ${data}\n\n`);
    },
    chunk(data) {
      events.write(`data: ${data}\n\n`);
    },
    end(unit) {
      if (!open) start(unit);
      events.flush();
      raw.end("data: [DONE]\n\n");
      resolve();
    },
    result(body, unit) {
      reply.header(NODE_HEADER, unit);
      resolve(withRequiredFields(body));
    },
    fail(err) {
      if (!open) return reject(err);
      events.flush();
      raw.end(`data: ${JSON.stringify(err.toBody())}\n\n`);
      resolve();
    },
  };
}

/**
 * Streamed events after the first, written straight to the socket as HTTP/1.1 chunks: those
 * that arrive within one turn of the event loop (a node's frames read from its TCP segments in
 * one poll) as one chunk in one write, at the end of that turn, so the system calls are per
 * batch, not per token; and while the client is behind (its socket holds more unsent bytes than
 * its high-water mark: tokens come faster than it reads), the events wait and go as one chunk
 * once the socket has drained. The response's own write() corks the socket and sends four buffers
 * on the next tick, which costs more CPU per token than the token's bytes; on a machine whose
 * cores llama-server is using, that CPU is taken from decoding. The response itself still sends
 * the headers, the first event and the last chunk, in order on the same socket: `flush` before it
 * writes again. A client whose unsent bytes (waiting here or in its socket) pass `limit` is
 * handed to `stalled`, once.
 */
export class EventWriter {
  /** the events not written yet, one string (no array, no join per batch) */
  private pending = "";
  /** a write is due at the end of this turn, or once the socket has drained */
  private due = false;
  private stalled: (() => void) | undefined;

  constructor(
    private readonly raw: ServerResponse,
    stalled: () => void,
    private readonly limit = MAX_UNSENT_STREAM_BYTES,
  ) {
    this.stalled = stalled;
  }

  write(event: string): void {
    this.pending += event;
    if (this.stalled && this.pending.length + (this.raw.socket?.writableLength ?? 0) > this.limit) {
      const stalled = this.stalled;
      this.stalled = undefined;
      this.pending = "";
      stalled();
      return;
    }
    if (this.due) return;
    this.due = true;
    setImmediate(this.turnEnded);
  }

  private readonly turnEnded = (): void => {
    const socket = this.raw.socket;
    // the client is behind (its socket holds more than its high-water mark unsent): this batch
    // grows until the socket has drained
    if (socket?.writableNeedDrain && this.pending && !this.raw.writableEnded) {
      socket.once("drain", this.drained);
      return;
    }
    this.drained();
  };

  private readonly drained = (): void => {
    this.due = false;
    this.flush();
  };

  flush(): void {
    if (!this.pending) return;
    const events = this.pending;
    this.pending = "";
    const socket = this.raw.socket;
    // a client dropped for not reading: its job is being cancelled, what it still sends goes nowhere
    if (socket?.destroyed) return;
    if (!socket || !this.raw.chunkedEncoding) {
      if (!this.raw.writableEnded) this.raw.write(events);
      return;
    }
    socket.write(`${Buffer.byteLength(events).toString(16)}\r\n${events}\r\n`);
    if (socket.writableLength > this.limit && this.stalled) {
      const stalled = this.stalled;
      this.stalled = undefined;
      stalled();
    }
  }
}
