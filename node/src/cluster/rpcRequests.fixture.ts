/** ggml-rpc requests as llama.cpp's client sends them (rpcWatch.ts), synthesized for tests. */

export const RPC = { ALLOC_BUFFER: 0, SET_TENSOR: 6, SET_TENSOR_HASH: 7, GRAPH_COMPUTE: 10, HELLO: 14, GRAPH_RECOMPUTE: 16 } as const;

/** A request: command, size (u64 LE, the payload's unless given), payload. */
export function request(command: number, payload: Buffer, size = BigInt(payload.length)): Buffer {
  const header = Buffer.alloc(9);
  header[0] = command;
  header.writeBigUInt64LE(size, 1);
  return Buffer.concat([header, payload]);
}

/** A packed rpc_tensor with a name (64 bytes at most, NUL-terminated when shorter), ne[3] and nb[3]; its other fields arbitrary. */
export function tensor(name: string | Buffer, ne3 = 1, nb3 = 0): Buffer {
  const t = Buffer.alloc(296, 0xab);
  t.writeUInt32LE(ne3, 32);
  t.writeUInt32LE(nb3, 48);
  t.fill(0, 228, 292);
  (typeof name === "string" ? Buffer.from(`${name}\0`) : name).copy(t, 228, 0, 64);
  return t;
}

export const hello = (): Buffer => request(RPC.HELLO, Buffer.alloc(24));

/** SET_TENSOR of `data` (or that many bytes) into a tensor of this name. */
export function setTensor(name: string | Buffer, data: number | Buffer, cacheFlag = 0): Buffer {
  const tail = Buffer.alloc(9);
  tail[0] = cacheFlag;
  return request(RPC.SET_TENSOR, Buffer.concat([tensor(name), tail, typeof data === "number" ? Buffer.alloc(data, 0x5a) : data]));
}

export const setTensorHash = (name: string, ne3: number, nb3: number): Buffer =>
  request(RPC.SET_TENSOR_HASH, Buffer.concat([tensor(name, ne3, nb3), Buffer.alloc(16, 7)]));

export const compute = (graph = Buffer.alloc(16)): Buffer => request(RPC.GRAPH_COMPUTE, graph);
