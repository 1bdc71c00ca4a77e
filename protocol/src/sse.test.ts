import { describe, expect, it } from "vitest";
import { SseDecoder } from "./sse.js";

describe("server-sent event decoder", () => {
  it("yields each event's data once the event is whole, however the text is cut", () => {
    const stream = 'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n';
    for (let size = 1; size <= stream.length; size++) {
      const sse = new SseDecoder();
      const got: string[] = [];
      for (let i = 0; i < stream.length; i += size) got.push(...sse.push(stream.slice(i, i + size)));
      expect(got).toEqual(['{"a":1}', '{"b":2}', "[DONE]"]);
    }
  });

  it("joins an event's data lines, drops one space after the colon, and skips other fields and data-less events", () => {
    const sse = new SseDecoder();
    expect(sse.push(": keep-alive\n\nevent: message\nid: 7\ndata:first\ndata:  second\n\nretry: 10\n\n")).toEqual(["first\n second"]);
    expect(sse.push("data: partial")).toEqual([]);
    expect(sse.push("\n\n")).toEqual(["partial"]);
  });
});
