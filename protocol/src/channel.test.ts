import { describe, expect, it } from "vitest";
import { channelPair } from "./channel.js";

describe("in-process control channel", () => {
  it("delivers frames in order, after the sender's call returns", async () => {
    const [a, b] = channelPair();
    const got: string[] = [];
    b.onMessage((f) => got.push(f));
    a.send("1");
    a.send("2");
    expect(got).toEqual([]);
    await Promise.resolve();
    expect(got).toEqual(["1", "2"]);
  });

  it("a close reaches both ends after the frames sent before it, and nothing is sent after it", async () => {
    const [a, b] = channelPair();
    const events: string[] = [];
    b.onMessage((f) => events.push(`b got ${f}`));
    a.onMessage((f) => events.push(`a got ${f}`));
    a.onClose((code, reason) => events.push(`a closed ${code} ${reason}`));
    b.onClose((code, reason) => events.push(`b closed ${code} ${reason}`));
    a.send("last");
    b.close(4001, "refused");
    expect(a.open).toBe(false);
    expect(b.open).toBe(false);
    a.send("too late");
    b.send("too late");
    b.close(1000, "again");
    await new Promise((r) => setTimeout(r, 0));
    expect(events).toEqual(["b got last", "b closed 4001 refused", "a closed 4001 refused"]);
  });
});
