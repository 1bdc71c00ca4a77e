/**
 * A model file for the tab's engine, by sha256 (docs/browser-node.md): from the browser's Cache
 * Storage when an earlier visit kept it, else from the coordinator's `GET /v1/blobs/<sha256>`.
 * Whatever its origin, its sha256 is checked before the engine sees a byte: a file that does not
 * match is refused with a message that says so, dropped from the cache, and nothing is loaded.
 */
import { type BrowserModel, sha256Hex } from "@sharedllm/protocol";

const CACHE = "sharedllm-models";

export class ModelFileMismatch extends Error {
  override name = "ModelFileMismatch";
}

/** Bytes received so far and the total, for the page. */
export type Progress = (received: number, total: number) => void;

export async function modelFile(model: BrowserModel, progress: Progress, signal: AbortSignal): Promise<Blob> {
  const cache = "caches" in globalThis ? await caches.open(CACHE).catch(() => undefined) : undefined;
  const cached = await cache?.match(model.url);
  let bytes: Uint8Array;
  let fromCache = false;
  if (cached) {
    bytes = new Uint8Array(await cached.arrayBuffer());
    fromCache = true;
    progress(bytes.length, bytes.length);
  } else {
    bytes = await download(model, progress, signal);
  }
  const got = (await sha256Hex(bytes)).slice(2);
  if (got !== model.sha256) {
    await cache?.delete(model.url);
    throw new ModelFileMismatch(
      `The model file ${fromCache ? "kept in this browser" : "from the coordinator"} is corrupt: its sha256 is ${got}, not ${model.sha256}. Nothing was loaded.`,
    );
  }
  const blob = new Blob([bytes as BlobPart], { type: "application/octet-stream" });
  if (!fromCache) await cache?.put(model.url, new Response(blob, { headers: { etag: `"${model.sha256}"` } })).catch(() => {});
  return blob;
}

async function download(model: BrowserModel, progress: Progress, signal: AbortSignal): Promise<Uint8Array> {
  const res = await fetch(model.url, { signal });
  if (!res.ok || !res.body) throw new Error(`The coordinator did not send the model file (HTTP ${res.status}).`);
  const total = Number(res.headers.get("content-length") ?? model.sizeBytes);
  if (total > model.sizeBytes) throw new ModelFileMismatch(`The model file is ${total} bytes, not ${model.sizeBytes}. Nothing was loaded.`);
  const bytes = new Uint8Array(model.sizeBytes);
  let received = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (received + value.length > bytes.length) {
      await reader.cancel();
      throw new ModelFileMismatch(`The model file is longer than its ${model.sizeBytes} bytes. Nothing was loaded.`);
    }
    bytes.set(value, received);
    received += value.length;
    progress(received, model.sizeBytes);
  }
  return received === bytes.length ? bytes : bytes.subarray(0, received);
}
