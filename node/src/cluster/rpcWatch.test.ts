/**
 * The RPC stream watch on synthesized ggml-rpc streams: the layers and bytes set are the same
 * whichever way the stream is cut into chunks; hostile input stops it with a reason, never a throw.
 */
import { describe, expect, it } from "vitest";
import { hello, RPC, request, setTensor, setTensorHash, tensor } from "./rpcRequests.fixture.js";
import { layerRun, RpcWatch } from "./rpcWatch.js";

const { ALLOC_BUFFER, SET_TENSOR, SET_TENSOR_HASH, GRAPH_COMPUTE, HELLO, GRAPH_RECOMPUTE } = RPC;

/** What a watch saw of a stream fed in these chunks: layers, bytes, and when computes began (layers set so far). */
function watch(chunks: Buffer[]) {
  const computes: number[][] = [];
  let weights = 0;
  const w: RpcWatch = new RpcWatch({ weights: () => weights++, compute: () => computes.push([...w.layers].sort((a, b) => a - b)) });
  for (const c of chunks) w.push(c);
  return { layers: [...w.layers].sort((a, b) => a - b), tensorBytes: w.tensorBytes, unreadable: w.unreadable, computes, weights };
}

/** A model load and two decodes as llama.cpp sends them, with the bytes a payload's header misreads as if followed. */
const stream = Buffer.concat([
  hello(),
  request(ALLOC_BUFFER, Buffer.alloc(12, 1)),
  setTensor("token_embd.weight", 40),
  setTensor("blk.3.attn_q.weight", 100),
  // a payload that looks like requests must not be read as such
  setTensor("blk.3.ffn_up.weight", setTensor("blk.77.x", 0)),
  setTensorHash("blk.4.ffn_down.weight", 2, 2500),
  setTensor("blk.4.ffn_down.weight", 5000, 1),
  setTensorHash("blk.5.ffn_down.weight", 1, 700),
  setTensor("blk.12.attn_k.weight", 0),
  request(GRAPH_COMPUTE, request(SET_TENSOR, tensor("blk.99.x"))),
  setTensor("inp_embd", 64),
  request(GRAPH_RECOMPUTE, Buffer.alloc(4)),
]);
const expected = {
  layers: [3, 4, 5, 12],
  tensorBytes: 100 + 314 + 5000 + 700,
  unreadable: undefined,
  computes: [
    [3, 4, 5, 12],
    [3, 4, 5, 12],
  ],
  weights: 6,
};

describe("RpcWatch", () => {
  it("sees the layers and bytes set, and each compute, however the stream is cut", () => {
    expect(watch([stream])).toEqual(expected);
    for (let cut = 1; cut < stream.length; cut++) expect(watch([stream.subarray(0, cut), stream.subarray(cut)])).toEqual(expected);
    expect(watch([...stream].map((b) => Buffer.of(b)))).toEqual(expected);
    // three pieces, cut around every header and tensor boundary
    for (let a = 1; a < 700; a += 7)
      for (let b = a + 1; b < stream.length; b += 97)
        expect(watch([stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)])).toEqual(expected);
  });

  it("reads a layer only from a name `blk.<digits>.`", () => {
    const names = [
      "blk.7.attn_q.weight",
      "blk.",
      "blk.x.w",
      "blk.8",
      "blk..w",
      "blk.99999999.w",
      "blkk.1.w",
      "BLK.2.w",
      "xblk.3.w",
      "blk.1048577.w",
    ];
    const noNul = Buffer.from(`blk.${"1".repeat(60)}`);
    const got = watch([hello(), ...names.map((n) => setTensor(n, 1)), setTensor(noNul, 1), setTensor("blk.0.w", 1)]);
    expect(got.layers).toEqual([0, 7]);
    expect(got.tensorBytes).toBe(2);
  });

  it("stops, with why, on what rpc-server refuses, and reads nothing after", () => {
    const cases: [string, Buffer[]][] = [
      ["does not open with ggml-rpc's HELLO", [setTensor("blk.0.w", 1)]],
      ["does not open with ggml-rpc's HELLO", [request(HELLO, Buffer.alloc(23))]],
      ["command 14 is not a request", [hello(), hello()]],
      ["command 18 is not a request", [hello(), request(18, Buffer.alloc(0))]],
      ["command 255 is not a request", [hello(), request(255, Buffer.alloc(0))]],
      ["a request of", [hello(), request(GRAPH_COMPUTE, Buffer.alloc(0), 2n ** 64n - 1n)]],
      ["a request of", [hello(), request(GRAPH_COMPUTE, Buffer.alloc(0), 2n ** 53n)]],
      ["SET_TENSOR of 304 bytes", [hello(), request(SET_TENSOR, Buffer.alloc(304))]],
      ["SET_TENSOR_HASH of 313 bytes", [hello(), request(SET_TENSOR_HASH, Buffer.alloc(313))]],
    ];
    for (const [why, chunks] of cases) {
      const got = watch([...chunks, setTensor("blk.1.w", 10), request(GRAPH_COMPUTE, Buffer.alloc(1))]);
      expect(got.unreadable).toContain(why);
      expect(got.layers).toEqual([]);
      expect(got.computes).toEqual([]);
    }
  });

  it("takes a size just under 2^53 as a skip (rpc-server would refuse to allocate it), and garbage without throwing", () => {
    const w = new RpcWatch();
    w.push(request(ALLOC_BUFFER, Buffer.alloc(0), 2n ** 53n - 1n));
    expect(w.unreadable).toContain("HELLO");
    const big = new RpcWatch();
    big.push(hello());
    big.push(request(GRAPH_COMPUTE, Buffer.alloc(0), 2n ** 53n - 1n));
    big.push(Buffer.alloc(1 << 20));
    expect(big.unreadable).toBeUndefined();
    // random bytes after a HELLO: stops or follows, never throws
    let seed = 1;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed;
    };
    for (let i = 0; i < 200; i++) {
      const junk = Buffer.alloc(rand() % 4000);
      for (let j = 0; j < junk.length; j++) junk[j] = rand() % 256;
      // a command below 18 and a small size, so that some junk is followed for a while
      if (junk.length > 9) {
        junk[0] = rand() % 18;
        junk.writeUInt32LE(rand() % 2000, 1);
        junk.writeUInt32LE(0, 5);
      }
      const watch = new RpcWatch();
      expect(() => {
        watch.push(hello());
        for (let at = 0; at < junk.length; at += 1 + (rand() % 300)) watch.push(junk.subarray(at, at + 1 + (rand() % 300)));
      }).not.toThrow();
    }
  });

  it("counts a hostile tensor's header size at most to the largest exact integer", () => {
    const w = new RpcWatch();
    w.push(
      Buffer.concat([hello(), setTensorHash("blk.0.w", 2 ** 32 - 1, 2 ** 32 - 1), setTensorHash("blk.1.w", 2 ** 32 - 1, 2 ** 32 - 1)]),
    );
    expect(w.tensorBytes).toBe(Number.MAX_SAFE_INTEGER);
  });
});

describe("layerRun", () => {
  it("is the run from the first layer seen to the last, and says whether any between is missing", () => {
    expect(layerRun(new Set())).toBeUndefined();
    expect(layerRun(new Set([5]))).toEqual({ firstLayer: 5, layerCount: 1, contiguous: true });
    expect(layerRun(new Set([12, 10, 11]))).toEqual({ firstLayer: 10, layerCount: 3, contiguous: true });
    expect(layerRun(new Set([0, 1, 3]))).toEqual({ firstLayer: 0, layerCount: 4, contiguous: false });
  });
});
