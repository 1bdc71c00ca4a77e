import { EventEmitter } from "node:events";
import type { ServerResponse } from "node:http";
import { describe, expect, it } from "vitest";
import { EventWriter } from "./sse.js";

/** A response whose socket records its writes; its `writableNeedDrain` says the client is behind. */
function response() {
  const socket = Object.assign(new EventEmitter(), {
    writableNeedDrain: false,
    writes: [] as string[],
    write(s: string) {
      this.writes.push(s);
      return true;
    },
  });
  const raw = { socket, chunkedEncoding: true, writableEnded: false } as unknown as ServerResponse;
  return { raw, socket };
}

const turn = () => new Promise((r) => setImmediate(r));

describe("EventWriter", () => {
  it("writes the events of one turn of the event loop as one HTTP chunk", async () => {
    const { raw, socket } = response();
    const events = new EventWriter(raw, () => {});
    events.write("data: a\n\n");
    await Promise.resolve();
    events.write("data: b\n\n");
    expect(socket.writes).toEqual([]);
    await turn();
    expect(socket.writes).toEqual(["12\r\ndata: a\n\ndata: b\n\n\r\n"]);
  });

  it("holds the events while the client is behind, and sends them as one chunk once its socket drains", async () => {
    const { raw, socket } = response();
    const events = new EventWriter(raw, () => {});
    socket.writableNeedDrain = true;
    events.write("data: a\n\n");
    await turn();
    events.write("data: b\n\n");
    await turn();
    events.write("data: c\n\n");
    await turn();
    expect(socket.writes).toEqual([]);
    socket.writableNeedDrain = false;
    socket.emit("drain");
    expect(socket.writes).toEqual(["1b\r\ndata: a\n\ndata: b\n\ndata: c\n\n\r\n"]);
    // then back to a chunk per turn
    events.write("data: d\n\n");
    await turn();
    expect(socket.writes).toHaveLength(2);
  });

  it("writes what it holds at once when the response is to end", () => {
    const { raw, socket } = response();
    const events = new EventWriter(raw, () => {});
    socket.writableNeedDrain = true;
    events.write("data: a\n\n");
    events.flush();
    expect(socket.writes).toEqual(["9\r\ndata: a\n\n\r\n"]);
  });
});
