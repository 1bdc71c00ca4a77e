/**
 * The transport under the control channel: text frames each way and a close with
 * a code and reason. A remote node's channel is a WebSocket; a node that runs in
 * the coordinator's own process (`sharedllm up`) gets an in-process pair, which
 * carries the same frames without the sockets, framing and copies of a loopback
 * WebSocket on every token.
 */
export interface ControlChannel {
  /** false once either end has closed */
  readonly open: boolean;
  send(frame: string): void;
  close(code?: number, reason?: string): void;
  onMessage(listener: (frame: string) => void): void;
  onClose(listener: (code: number, reason: string) => void): void;
}

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

/** The coordinator would not open a channel (e.g. 401: the node's session token is not valid). */
export class ChannelRefused extends Error {
  override name = "ChannelRefused";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Two connected ends. Frames and the close are delivered as microtasks, in order,
 * never inside the sender's call: the same ordering a socket gives, at no copy.
 */
export function channelPair(): [ControlChannel, ControlChannel] {
  type Listeners = { message: Array<(frame: string) => void>; close: Array<(code: number, reason: string) => void> };
  const sides: [Listeners, Listeners] = [
    { message: [], close: [] },
    { message: [], close: [] },
  ];
  let open = true;
  const end = (mine: Listeners, theirs: Listeners): ControlChannel => ({
    get open() {
      return open;
    },
    send(frame) {
      if (!open) return;
      queueMicrotask(() => {
        for (const l of theirs.message) l(frame);
      });
    },
    close(code = 1000, reason = "") {
      if (!open) return;
      open = false;
      queueMicrotask(() => {
        for (const l of [...mine.close, ...theirs.close]) l(code, reason);
      });
    },
    onMessage(listener) {
      mine.message.push(listener);
    },
    onClose(listener) {
      mine.close.push(listener);
    },
  });
  return [end(sides[0], sides[1]), end(sides[1], sides[0])];
}
