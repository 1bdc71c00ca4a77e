/**
 * The transport under the control channel: text frames each way and a close with
 * a code and reason. A remote node's channel is a WebSocket (webSocketChannel.ts,
 * in the `/node` entry); a node that runs in the coordinator's own process
 * (`sharedllm up`) gets an in-process pair, which carries the same frames without
 * the sockets, framing and copies of a loopback WebSocket on every token.
 */
export interface ControlChannel {
  /** false once either end has closed */
  readonly open: boolean;
  send(frame: string): void;
  close(code?: number, reason?: string): void;
  onMessage(listener: (frame: string) => void): void;
  onClose(listener: (code: number, reason: string) => void): void;
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
