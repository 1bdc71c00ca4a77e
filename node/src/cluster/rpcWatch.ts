/**
 * What a head places on this worker, read off the ggml-rpc stream from the head to rpc-server as it
 * passes through the worker's tunnel end (docs/security/cluster.md, "Layer reports"). The worker
 * reports it to the coordinator, signed, so a head's word on which layers a member holds (and so
 * how a split job's credits are shared) is checked against the member's own view.
 *
 * ggml-rpc of the bundled llama.cpp (ggml/src/ggml-rpc/ggml-rpc.cpp): every request is
 *
 *   | command u8 | size u64 LE | payload (size bytes) |
 *
 * and the first is HELLO with its 24 bytes of transport capabilities (an upgrade to RDMA would take
 * the stream off this socket; it needs an RDMA device behind both sockets' addresses, and ours are
 * 127.0.0.1 at the head and a Unix socket at the worker). SET_TENSOR's payload is
 * `| rpc_tensor | cache flag u8 | offset u64 | data |`, SET_TENSOR_HASH's
 * `| rpc_tensor | offset u64 | hash u64 |` (data the worker's tensor cache already holds). In the
 * packed 296-byte rpc_tensor, `ne` (u32[4]) is at byte 20, `nb` (u32[4]) at 36 and the
 * NUL-terminated `name[64]` at 228; a model's layer weights are named `blk.<N>.<...>`.
 *
 * This runs on every byte of every token, so it does header arithmetic only and skips payloads
 * without copying them, but for the first bytes of the two tensor-setting commands. Input it
 * cannot follow (what rpc-server itself refuses) stops it and says why; it never throws.
 */

/** enum rpc_cmd */
const SET_TENSOR = 6;
const SET_TENSOR_HASH = 7;
const GRAPH_COMPUTE = 10;
const HELLO = 14;
const GRAPH_RECOMPUTE = 16;
/** RPC_CMD_NONE: the first value that is not a request (rpc-server ends the connection on it and above) */
const NOT_A_REQUEST = 18;

const HEADER = 9;
const TENSOR = 296;
const HELLO_SIZE = 24;
/** rpc_tensor, cache flag, offset */
const SET_TENSOR_MIN = TENSOR + 1 + 8;
/** rpc_tensor, offset, hash */
const SET_TENSOR_HASH_SIZE = TENSOR + 8 + 8;
const NE3_AT = 32;
const NB3_AT = 48;
const NAME_AT = 228;
const NAME_END = NAME_AT + 64;
/** the highest layer index read from a name (llama.cpp's LLAMA_MAX_LAYERS is 512) */
const MAX_LAYER = 1 << 20;

/** b, l, k, . */
const BLK = [0x62, 0x6c, 0x6b, 0x2e];

/** The layer index of a tensor named `blk.<N>.<...>` in an rpc_tensor, or -1 for any other name. */
function layerOf(tensor: Buffer): number {
  for (let i = 0; i < BLK.length; i++) if (tensor[NAME_AT + i] !== BLK[i]) return -1;
  let n = 0;
  let digits = 0;
  for (let i = NAME_AT + BLK.length; i < NAME_END; i++) {
    const c = tensor[i] as number;
    if (c >= 0x30 && c <= 0x39) {
      n = n * 10 + (c - 0x30);
      if (++digits > 7 || n > MAX_LAYER) return -1;
    } else return c === 0x2e && digits > 0 ? n : -1;
  }
  return -1;
}

/** One connection's stream from the head to rpc-server, followed as it passes. */
export class RpcWatch {
  /** the layers (`blk.<N>` tensors) whose weights the head set on this worker */
  readonly layers = new Set<number>();
  /**
   * Bytes of those weights: the data each SET_TENSOR carried and, for a SET_TENSOR_HASH (data
   * the worker's cache held), the tensor's size by its header; a SET_TENSOR that follows a missed
   * hash (its cache flag set) is not counted again.
   */
  tensorBytes = 0;
  /** why the stream could not be followed; nothing more is read once set */
  unreadable: string | undefined;

  private hello = false;
  /** the bytes of the current header or tensor, as they arrive */
  private readonly buf = Buffer.alloc(TENSOR + 1);
  private filled = 0;
  /** how many bytes `buf` waits for: a header, or the start of a tensor-setting payload */
  private want = HEADER;
  private command = -1;
  private size = 0;
  /** payload bytes still to pass unread */
  private skip = 0;

  constructor(
    private readonly on: {
      /** a layer's weights were set (the layers or the bytes changed) */
      weights?: () => void;
      /** a GRAPH_COMPUTE or GRAPH_RECOMPUTE request began */
      compute?: () => void;
    } = {},
  ) {}

  /** Reads the next bytes of the stream, in the order they go to rpc-server. */
  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && this.unreadable === undefined) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - at);
        this.skip -= n;
        at += n;
        continue;
      }
      const n = Math.min(this.want - this.filled, chunk.length - at);
      chunk.copy(this.buf, this.filled, at, at + n);
      this.filled += n;
      at += n;
      if (this.filled < this.want) return;
      this.filled = 0;
      if (this.want === HEADER) this.header();
      else this.tensor();
    }
  }

  private stop(why: string) {
    this.unreadable = why;
  }

  private header() {
    const command = this.buf[0] as number;
    const high = this.buf.readUInt32LE(5);
    // 2^53 bytes or more: beyond any request rpc-server could take, and beyond exact arithmetic here
    if (high >= 2 ** 21) return this.stop(`a request of ${high * 2 ** 32} bytes or more`);
    const size = high * 2 ** 32 + this.buf.readUInt32LE(1);
    if (!this.hello) {
      if (command !== HELLO || size !== HELLO_SIZE) return this.stop("the stream does not open with ggml-rpc's HELLO");
      this.hello = true;
    } else if (command === HELLO || command >= NOT_A_REQUEST) return this.stop(`command ${command} is not a request after HELLO`);
    this.command = command;
    this.size = size;
    if (command === SET_TENSOR) {
      if (size < SET_TENSOR_MIN) return this.stop(`SET_TENSOR of ${size} bytes`);
      this.want = TENSOR + 1;
      return;
    }
    if (command === SET_TENSOR_HASH) {
      if (size !== SET_TENSOR_HASH_SIZE) return this.stop(`SET_TENSOR_HASH of ${size} bytes`);
      this.want = TENSOR;
      return;
    }
    this.skip = size;
    if (command === GRAPH_COMPUTE || command === GRAPH_RECOMPUTE) this.on.compute?.();
  }

  private tensor() {
    this.want = HEADER;
    this.skip = this.size - (this.command === SET_TENSOR ? TENSOR + 1 : TENSOR);
    const layer = layerOf(this.buf);
    if (layer < 0) return;
    if (this.command === SET_TENSOR) {
      // cache flag 1: the data of a hash the worker's cache missed, already counted with the hash
      if (this.buf[TENSOR] === 0) this.count(this.size - SET_TENSOR_MIN);
    } else this.count(this.buf.readUInt32LE(NE3_AT) * this.buf.readUInt32LE(NB3_AT));
    this.layers.add(layer);
    this.on.weights?.();
  }

  private count(bytes: number) {
    this.tensorBytes = Math.min(Number.MAX_SAFE_INTEGER, this.tensorBytes + bytes);
  }
}

/** The layers seen, as a run: the first, how many from it to the last, and whether every one between was seen. */
export function layerRun(layers: Iterable<number>): { firstLayer: number; layerCount: number; contiguous: boolean } | undefined {
  let first = Number.POSITIVE_INFINITY;
  let last = -1;
  let count = 0;
  for (const l of layers) {
    first = Math.min(first, l);
    last = Math.max(last, l);
    count++;
  }
  if (!count) return undefined;
  return { firstLayer: first, layerCount: last - first + 1, contiguous: count === last - first + 1 };
}
