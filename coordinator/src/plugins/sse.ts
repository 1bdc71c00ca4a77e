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
 * The output of a job answering `reply`: `resolve` hears when the response is over (with the body
 * fastify is to send, or nothing when the stream was written here), `reject` when it is an HTTP error.
 */
export function jobResponse(reply: FastifyReply, resolve: (body?: unknown) => void, reject: (err: ApiError) => void): JobOutput {
  const raw = reply.raw;
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
      writeEvent(raw, `data: ${data}\n\n`);
    },
    end(unit) {
      if (!open) start(unit);
      raw.end("data: [DONE]\n\n");
      resolve();
    },
    result(body, unit) {
      reply.header(NODE_HEADER, unit);
      resolve(withRequiredFields(body));
    },
    fail(err) {
      if (!open) return reject(err);
      raw.end(`data: ${JSON.stringify(err.toBody())}\n\n`);
      resolve();
    },
  };
}

/**
 * A streamed event after the first, written straight to the socket as one HTTP/1.1
 * chunk. The response's own write() corks the socket and sends four buffers on the
 * next tick, which costs more CPU per token than the token's bytes; on a machine
 * whose cores llama-server is using, that CPU is taken from decoding. The response
 * itself still sends the headers, the first event and the last chunk, in order on
 * the same socket.
 */
function writeEvent(raw: ServerResponse, event: string): void {
  const socket = raw.socket;
  if (!socket || !raw.chunkedEncoding) {
    raw.write(event);
    return;
  }
  socket.write(`${Buffer.byteLength(event).toString(16)}\r\n${event}\r\n`);
}
