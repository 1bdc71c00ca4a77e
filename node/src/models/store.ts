/**
 * Content-addressed model store under `$SHAREDLLM_CACHE/models/`:
 * `blobs/sha256-<hex>` holds each GGUF once, `manifest.json` maps stable model ids
 * (`smollm2-135m-instruct`) to blobs. Every blob arrives through a temporary file
 * that is hashed, checked for the GGUF magic and renamed into place only when good,
 * so a bad source, a checksum mismatch or an interruption leaves nothing half-written.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { acquireLock, writeFileAtomic } from "../lock.js";
import { type ProgressFactory, silentProgress } from "../progress.js";
import { ModelError } from "./modelError.js";
import { fetchDefaultModel, fetchHuggingFace, parseSource } from "./sources.js";

export interface ModelEntry {
  id: string;
  sha256: string;
  size: number;
  /** the source it was pulled from, as the user wrote it */
  source: string;
  addedAt: string;
}

interface Manifest {
  version: 1;
  models: Record<string, ModelEntry>;
}

const GGUF_MAGIC = Buffer.from("GGUF", "ascii");
const ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,127}$/;

export interface PullOptions {
  /** the model id to register; default: derived from the source */
  id?: string;
  /** expected sha256 (hex); required to match when given */
  sha256?: string;
  progress?: ProgressFactory;
  signal?: AbortSignal;
}

export class ModelStore {
  readonly root: string;

  constructor(cache: string) {
    this.root = join(cache, "models");
  }

  private get manifestPath() {
    return join(this.root, "manifest.json");
  }

  blobPath(sha256: string): string {
    return join(this.root, "blobs", `sha256-${sha256}`);
  }

  async list(): Promise<ModelEntry[]> {
    return Object.values((await this.readManifest()).models).sort((a, b) => a.id.localeCompare(b.id));
  }

  async get(id: string): Promise<ModelEntry | undefined> {
    return (await this.readManifest()).models[id];
  }

  /** Path of a pulled model's GGUF file; throws a ModelError saying how to pull it. */
  async path(id: string): Promise<string> {
    const entry = await this.get(id);
    if (!entry) throw new ModelError(`model "${id}" is not in the store; run: sharedllm models pull ${id}`);
    return this.blobPath(entry.sha256);
  }

  /**
   * Adds a model from a source: `default` / `smollm2-135m-instruct` (the bundled
   * default), `hf:<org>/<repo>/<file>`, or a local path. Returns the existing entry
   * when the id is already present with the same content.
   */
  async pull(source: string, opts: PullOptions = {}): Promise<ModelEntry> {
    const parsed = parseSource(source);
    const id = opts.id ?? parsed.id;
    if (!ID_PATTERN.test(id)) {
      throw new ModelError(`"${id}" is not a valid model id: use lower-case letters, digits, ".", "_" or "-"`);
    }
    const existing = await this.get(id);
    if (existing && (await this.blobIsPresent(existing))) {
      const wanted = opts.sha256 ?? parsed.sha256;
      if (!wanted || wanted === existing.sha256) return existing;
    }
    const tmpDir = join(this.root, "tmp");
    await mkdir(tmpDir, { recursive: true });
    await mkdir(join(this.root, "blobs"), { recursive: true });
    const progress = opts.progress ?? silentProgress;
    let file: string;
    let expected = opts.sha256 ?? parsed.sha256;
    let cleanup = async () => {};
    switch (parsed.kind) {
      case "default": {
        const r = await fetchDefaultModel(tmpDir, progress, opts.signal);
        file = r.file;
        cleanup = r.cleanup;
        break;
      }
      case "hf": {
        const r = await fetchHuggingFace(parsed, tmpDir, progress, opts.signal);
        file = r.file;
        expected ??= r.sha256;
        cleanup = r.cleanup;
        break;
      }
      case "local":
        file = parsed.path;
        break;
    }
    try {
      await assertGguf(file, source);
      const { sha256, size } = await hashFile(file);
      if (expected && expected !== sha256) {
        throw new ModelError(
          `checksum mismatch for ${source}: expected sha256 ${expected}, got ${sha256}. The file is corrupt or not the one you meant; nothing was added.`,
        );
      }
      const blob = this.blobPath(sha256);
      if (!(await exists(blob))) {
        if (parsed.kind === "local") {
          const tmp = join(tmpDir, `copy-${process.pid}-${sha256}`);
          await pipeline(createReadStream(file), createWriteStream(tmp));
          await rename(tmp, blob);
        } else {
          await rename(file, blob);
        }
      }
      const entry: ModelEntry = { id, sha256, size, source, addedAt: new Date().toISOString() };
      await this.updateManifest((m) => {
        m.models[id] = entry;
      });
      return entry;
    } finally {
      await cleanup();
    }
  }

  /** Removes a model id; its blob goes too when no other id points at it. */
  async rm(id: string): Promise<ModelEntry> {
    let removed: ModelEntry | undefined;
    let orphan = false;
    await this.updateManifest((m) => {
      removed = m.models[id];
      if (!removed) return;
      delete m.models[id];
      orphan = !Object.values(m.models).some((e) => e.sha256 === removed?.sha256);
    });
    if (!removed) throw new ModelError(`model "${id}" is not in the store (see: sharedllm models list)`);
    if (orphan) await rm(this.blobPath(removed.sha256), { force: true });
    return removed;
  }

  private async blobIsPresent(e: ModelEntry): Promise<boolean> {
    const s = await stat(this.blobPath(e.sha256)).catch(() => undefined);
    return s?.size === e.size;
  }

  private async readManifest(): Promise<Manifest> {
    try {
      return JSON.parse(await readFile(this.manifestPath, "utf8")) as Manifest;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { version: 1, models: {} };
      throw new ModelError(`model manifest ${this.manifestPath} is unreadable: ${(err as Error).message}`);
    }
  }

  private async updateManifest(change: (m: Manifest) => void): Promise<void> {
    await mkdir(this.root, { recursive: true });
    const release = await acquireLock(join(this.root, ".manifest.lock"));
    try {
      const m = await this.readManifest();
      change(m);
      await writeFileAtomic(this.manifestPath, `${JSON.stringify(m, null, 2)}\n`);
    } finally {
      await release();
    }
  }
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

async function assertGguf(file: string, source: string): Promise<void> {
  const fh = await open(file, "r").catch((err: NodeJS.ErrnoException) => {
    throw new ModelError(`cannot read ${source}: ${err.code === "ENOENT" ? "no such file" : err.message}`);
  });
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    if (bytesRead < 4 || !head.equals(GGUF_MAGIC)) {
      throw new ModelError(`${source} is not a GGUF model file (llama.cpp needs .gguf); nothing was added`);
    }
  } finally {
    await fh.close();
  }
}

async function hashFile(file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(file)) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest("hex"), size };
}
