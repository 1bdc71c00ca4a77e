/**
 * Connections from the node to its llama-server. llama-server may drop a
 * kept-alive connection right after a streamed response, so every job gets a
 * connection of its own; to keep the TCP handshake off the time to first token,
 * one is always opened ahead and waits, warm, for the next job.
 */
import { connect, type Socket } from "node:net";

/** A warm connection older than this is replaced: llama-server closes idle ones after 5 s. */
const MAX_IDLE_MS = 3_000;

export class EngineConnections {
  private spare: { socket: Socket; openedAt: number } | undefined;
  private closed = false;

  constructor(
    private readonly port: number,
    /** llama-server's Authorization header value */
    readonly authorization?: string,
    private readonly host = "127.0.0.1",
  ) {}

  /** A connected socket for one request, fresh or warm; a new spare is opened behind it. */
  take(): Socket {
    const warm = this.spare;
    this.spare = undefined;
    const usable = warm && !warm.socket.destroyed && warm.socket.readyState === "open" && Date.now() - warm.openedAt < MAX_IDLE_MS;
    if (warm && !usable) warm.socket.destroy();
    const socket = usable ? warm.socket : this.open();
    socket.removeAllListeners("error");
    setImmediate(() => this.refill());
    return socket;
  }

  private open(): Socket {
    const socket = connect({ port: this.port, host: this.host, noDelay: true });
    return socket;
  }

  private refill(): void {
    if (this.closed || this.spare) return;
    const socket = this.open();
    // a spare that fails or is closed by the server is simply dropped
    socket.on("error", () => socket.destroy());
    socket.once("close", () => {
      if (this.spare?.socket === socket) this.spare = undefined;
    });
    this.spare = { socket, openedAt: Date.now() };
  }

  close(): void {
    this.closed = true;
    this.spare?.socket.destroy();
    this.spare = undefined;
  }
}
