import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ModelError } from "./modelError.js";
import { DEFAULT_MODEL, parseSource } from "./sources.js";
import { ModelStore } from "./store.js";

/** A small file that is a GGUF as far as the store can tell (magic + version + payload). */
function fakeGguf(size = 200_000): Buffer {
  const b = randomBytes(size);
  b.write("GGUF", 0, "ascii");
  return b;
}
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

let dir: string;
let store: ModelStore;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "store-"));
  store = new ModelStore(join(dir, "cache"));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

async function storeFiles(): Promise<string[]> {
  const blobs = await readdir(join(store.root, "blobs")).catch(() => []);
  const tmp = await readdir(join(store.root, "tmp")).catch(() => []);
  return [...blobs.map((b) => `blobs/${b}`), ...tmp.map((t) => `tmp/${t}`)];
}

describe("local sources", () => {
  it("adds a GGUF content-addressed, lists it and serves its path", async () => {
    const data = fakeGguf();
    const file = join(dir, "Tiny-Model.Q4_0.gguf");
    await writeFile(file, data);
    const e = await store.pull(file);
    expect(e).toMatchObject({ id: "tiny-model.q4_0", sha256: sha(data), size: data.length });
    expect(await readFile(await store.path(e.id))).toEqual(data);
    expect((await store.list()).map((m) => m.id)).toEqual(["tiny-model.q4_0"]);
    // the same content under a second id shares the blob; removing one keeps it
    await store.pull(file, { id: "alias" });
    expect(await storeFiles()).toEqual([`blobs/sha256-${sha(data)}`]);
    await store.rm("alias");
    expect(existsSync(store.blobPath(e.sha256))).toBe(true);
    await store.rm(e.id);
    expect(existsSync(store.blobPath(e.sha256))).toBe(false);
    await expect(store.rm(e.id)).rejects.toThrow(/not in the store/);
  });

  it("refuses a file that is not GGUF and leaves nothing behind", async () => {
    const file = join(dir, "notes.gguf");
    await writeFile(file, "hello, not a model");
    await expect(store.pull(file)).rejects.toThrow(/not a GGUF model file/);
    expect(await storeFiles()).toEqual([]);
    expect(await store.list()).toEqual([]);
  });

  it("refuses a checksum mismatch and a missing file with clear errors", async () => {
    const file = join(dir, "m.gguf");
    await writeFile(file, fakeGguf());
    await expect(store.pull(file, { sha256: "0".repeat(64) })).rejects.toThrow(/checksum mismatch/);
    await expect(store.pull(join(dir, "absent.gguf"))).rejects.toThrow(/no such file/);
    expect(await storeFiles()).toEqual([]);
    await expect(store.path("absent")).rejects.toThrow(/sharedllm models pull absent/);
  });

  it("rejects unsupported sources and bad ids", () => {
    expect(() => parseSource("ftp://x/y.gguf")).toThrow(ModelError);
    expect(() => parseSource("hf:only-org/file.gguf")).toThrow(/hf:<org>\/<repo>\/<file>/);
    expect(parseSource("default")).toMatchObject({ kind: "default", id: DEFAULT_MODEL.id });
    expect(parseSource("hf:org/repo/dir/X.gguf@v2")).toMatchObject({
      kind: "hf",
      repo: "org/repo",
      file: "dir/X.gguf",
      revision: "v2",
      id: "x",
    });
  });
});

describe("hf: sources over real HTTP", () => {
  const data = fakeGguf(1_000_000);
  let server: Server;
  let requests: { url: string; range?: string }[] = [];
  /** when set, the server cuts the body after this many bytes, once */
  let cutAfter: number | undefined;
  let etag = sha(data);

  beforeAll(async () => {
    server = createServer((req, res) => {
      requests.push({ url: req.url ?? "", range: req.headers.range });
      if (!req.url?.startsWith("/org/repo/resolve/main/model.Q8_0.gguf")) {
        res.writeHead(404).end();
        return;
      }
      const start = Number(/bytes=(\d+)-/.exec(req.headers.range ?? "")?.[1] ?? 0);
      const body = data.subarray(start);
      res.writeHead(start ? 206 : 200, { "content-length": body.length, "x-linked-etag": `"${etag}"` });
      if (cutAfter !== undefined) {
        const n = cutAfter;
        cutAfter = undefined;
        res.write(body.subarray(0, n), () => res.destroy());
        return;
      }
      res.end(body);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    process.env.SHAREDLLM_HF_ENDPOINT = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    delete process.env.SHAREDLLM_HF_ENDPOINT;
    await new Promise((r) => server.close(r));
  });
  beforeEach(() => {
    requests = [];
    etag = sha(data);
  });

  it("resumes an interrupted download with a Range request and verifies the hub's sha256", async () => {
    cutAfter = 300_000;
    await expect(store.pull("hf:org/repo/model.Q8_0.gguf")).rejects.toThrow();
    // the partial file stays for the next attempt, and nothing is in the manifest
    expect(await store.list()).toEqual([]);
    const [part] = (await storeFiles()).filter((f) => f.startsWith("tmp/"));
    expect(part).toMatch(/\.part$/);
    const partSize = (await stat(join(store.root, part as string))).size;
    expect(partSize).toBeGreaterThan(0);
    expect(partSize).toBeLessThan(data.length);

    const e = await store.pull("hf:org/repo/model.Q8_0.gguf");
    expect(requests.at(-1)?.range).toBe(`bytes=${partSize}-`);
    expect(e).toMatchObject({ id: "model.q8_0", sha256: sha(data), size: data.length });
    expect(await storeFiles()).toEqual([`blobs/sha256-${sha(data)}`]);
  });

  it("refuses a download whose content does not match the hub's checksum", async () => {
    etag = "f".repeat(64);
    await expect(store.pull("hf:org/repo/model.Q8_0.gguf")).rejects.toThrow(/checksum mismatch/);
    expect(await storeFiles()).toEqual([]);
  });

  it("reports a missing file plainly", async () => {
    await expect(store.pull("hf:org/repo/missing.gguf")).rejects.toThrow(/was not found \(HTTP 404\)/);
  });
});
