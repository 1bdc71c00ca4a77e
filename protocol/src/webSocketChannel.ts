/**
 * A `ws` WebSocket (either end) as a control channel (channel.ts). Node-only: it reads
 * frames as Buffers and times out an unanswered close with an unref'd timer.
 */
import type { ControlChannel } from "./channel.js";

/** The part of a `ws` WebSocket that a channel uses (protocol itself does not depend on ws). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly OPEN: number;
  send(frame: string): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  on(event: "message", listener: (data: Buffer) => void): unknown;
  on(event: "close", listener: (code: number, reason: Buffer) => void): unknown;
}

/** An open WebSocket, either end, as a control channel. */
export function webSocketChannel(ws: WebSocketLike): ControlChannel {
  return {
    get open() {
      return ws.readyState === ws.OPEN;
    },
    send: (frame) => ws.send(frame),
    close: (code, reason) => {
      ws.close(code, reason);
      // a peer that never answers the close handshake
      setTimeout(() => ws.terminate(), 2_000).unref();
    },
    onMessage: (listener) => ws.on("message", (data: Buffer) => listener(data.toString("utf8"))),
    onClose: (listener) => ws.on("close", (code: number, reason: Buffer) => listener(code, reason.toString())),
  };
}
