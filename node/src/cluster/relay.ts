/**
 * Moves bytes between two connected sockets in this process, both ways, until both are closed.
 * Every tunnel link is TLS (the bytes are encrypted and checked here), so no other process can
 * take the sockets over; Nagle's algorithm is off on both, since llama.cpp RPC makes many small
 * round trips per token.
 */
import type { Socket } from "node:net";

export interface Relayed {
  /** resolves when both directions are closed, with the bytes moved a -> b and b -> a */
  done: Promise<{ aToB: number; bToA: number }>;
  /** ends the relay (and so both connections) now */
  close(): void;
}

/**
 * Relays `a` and `b`; both must be paused with nothing read and not yet forwarded. `watch` sees
 * each chunk from `a` before `b` does: when it answers false, the chunk is dropped and the relay
 * ends.
 */
export function relay(a: Socket, b: Socket, watch?: (chunk: Buffer) => boolean): Relayed {
  a.setNoDelay(true);
  b.setNoDelay(true);
  let aToB = 0;
  let bToA = 0;
  // plain handlers rather than pipe(): one write per chunk, backpressure by pause/resume
  const forward = (from: Socket, to: Socket, count: (n: number) => void, watch?: (chunk: Buffer) => boolean) => {
    from.on("data", (d: Buffer) => {
      if (watch && !watch(d)) {
        a.destroy();
        b.destroy();
        return;
      }
      count(d.length);
      if (!to.write(d)) {
        from.pause();
        to.once("drain", () => from.resume());
      }
    });
    from.once("end", () => to.end());
    from.once("error", () => to.destroy());
    from.once("close", () => to.destroy());
  };
  forward(
    a,
    b,
    (n) => {
      aToB += n;
    },
    watch,
  );
  forward(b, a, (n) => {
    bToA += n;
  });
  a.resume();
  b.resume();
  const done = Promise.all([new Promise((r) => a.once("close", r)), new Promise((r) => b.once("close", r))]).then(() => ({ aToB, bToA }));
  return {
    done,
    close: () => {
      a.destroy();
      b.destroy();
    },
  };
}
