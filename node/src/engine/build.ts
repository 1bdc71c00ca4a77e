/**
 * Engine manager: builds `llama-server` and `ggml-rpc-server` from the llama.cpp
 * source that the pinned node-llama-cpp package bundles, once per machine, into
 * `$SHAREDLLM_CACHE/engine/<tag>-<variant>-<patches digest>/`.
 *
 * A build happens in a private work folder and becomes visible only by an atomic
 * rename of a finished folder that holds `engine.json`; an interrupted or failed
 * build therefore never leaves anything that a later run takes as good.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { arch, cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { SharedLLMError } from "../errors.js";
import { acquireLock, isAlive } from "../lock.js";
import { type ProgressFactory, silentProgress } from "../progress.js";

export type EngineVariant = "cpu" | "cuda" | "vulkan";

export interface Engine {
  /** llama.cpp release tag from node-llama-cpp, e.g. `b1234` */
  tag: string;
  variant: EngineVariant;
  dir: string;
  binDir: string;
  llamaServer: string;
  rpcServer: string;
  builtAt: string;
}

const TARGETS = ["llama-server", "ggml-rpc-server"] as const;
/**
 * Our changes to the bundled source, applied in name order before configuring. Today one: ggml's
 * rpc-server also listens on a Unix socket (host `unix:PATH`, the socket made 0600), so a worker's
 * rpc-server is out of other local users' reach (docs/security/cluster.md).
 */
const PATCHES = join(import.meta.dirname, "..", "..", "engine-patches");
const NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";
const require = createRequire(import.meta.url);

/** The llama.cpp source bundled in node-llama-cpp and its release tag. */
export async function bundledSource(): Promise<{ bundle: string; tag: string }> {
  // the package exports no ./package.json: walk up from its entry point
  let pkgDir = dirname(require.resolve("node-llama-cpp"));
  while (!existsSync(join(pkgDir, "llama", "gitRelease.bundle"))) {
    if (dirname(pkgDir) === pkgDir) throw new SharedLLMError("engine", "node-llama-cpp has no bundled llama.cpp source; run npm install");
    pkgDir = dirname(pkgDir);
  }
  const info = JSON.parse(await readFile(join(pkgDir, "llama", "llama.cpp.info.json"), "utf8")) as {
    tag: string;
  };
  return { bundle: join(pkgDir, "llama", "gitRelease.bundle"), tag: info.tag };
}

async function patchFiles(): Promise<string[]> {
  return (await readdir(PATCHES))
    .filter((f) => f.endsWith(".patch"))
    .sort()
    .map((f) => join(PATCHES, f));
}

/** A short digest of our patches: an engine built from other patches is another engine. */
async function patchesDigest(): Promise<string> {
  const hash = createHash("sha256");
  for (const file of await patchFiles()) hash.update(await readFile(file));
  return hash.digest("hex").slice(0, 8);
}

/** CUDA or Vulkan only where both the toolkit and a device exist; override with SHAREDLLM_ENGINE_VARIANT. */
export function detectVariant(env: NodeJS.ProcessEnv = process.env): EngineVariant {
  const forced = env.SHAREDLLM_ENGINE_VARIANT;
  if (forced === "cpu" || forced === "cuda" || forced === "vulkan") return forced;
  const ok = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: "ignore" }).status === 0;
  if (ok("nvcc", ["--version"]) && ok("nvidia-smi", ["-L"])) return "cuda";
  if (ok("glslc", ["--version"]) && ok("vulkaninfo", ["--summary"])) return "vulkan";
  return "cpu";
}

/** Where an engine lives in the cache: by release, variant and our patches. */
async function engineDir(cache: string, tag: string, variant: EngineVariant): Promise<string> {
  return join(cache, "engine", `${tag}-${variant}-${await patchesDigest()}`);
}

/** The finished engine in the cache, or undefined when none is built. */
export async function findEngine(cache: string, variant: EngineVariant = detectVariant()): Promise<Engine | undefined> {
  const { tag } = await bundledSource();
  const dir = await engineDir(cache, tag, variant);
  try {
    const engine = JSON.parse(await readFile(join(dir, "engine.json"), "utf8")) as Engine;
    if (existsSync(engine.llamaServer) && existsSync(engine.rpcServer)) return engine;
  } catch {
    // no finished build here
  }
  return undefined;
}

export interface BuildOptions {
  cache: string;
  variant?: EngineVariant;
  progress?: ProgressFactory;
  signal?: AbortSignal;
  /** build threads; default: all cores */
  jobs?: number;
}

/** Returns the cached engine, building it first when needed. */
export async function ensureEngine(opts: BuildOptions): Promise<Engine> {
  const variant = opts.variant ?? detectVariant();
  const found = await findEngine(opts.cache, variant);
  if (found) return found;
  const { bundle, tag } = await bundledSource();
  const root = join(opts.cache, "engine");
  await mkdir(root, { recursive: true });
  const release = await acquireLock(join(root, `.lock-${tag}-${variant}`), opts.signal);
  try {
    // another process may have finished the build while we waited for the lock
    const built = await findEngine(opts.cache, variant);
    if (built) return built;
    await removeStaleWork(root);
    return await build({ ...opts, variant, bundle, tag, root });
  } finally {
    await release();
  }
}

async function build(o: BuildOptions & { variant: EngineVariant; bundle: string; tag: string; root: string }): Promise<Engine> {
  const work = join(o.root, `.work-${o.tag}-${o.variant}-${process.pid}`);
  const progress = (o.progress ?? silentProgress)(`engine ${o.tag}-${o.variant}`);
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    const src = join(work, "src");
    const out = join(work, "build");
    progress.update(0, "unpacking llama.cpp source");
    await checkoutSource(o.bundle, src, o.signal);
    const flags = [
      "-DCMAKE_BUILD_TYPE=Release",
      "-DGGML_RPC=ON",
      "-DLLAMA_CURL=OFF",
      "-DLLAMA_OPENSSL=OFF",
      "-DLLAMA_BUILD_UI=OFF",
      "-DLLAMA_USE_PREBUILT_UI=OFF",
      "-DLLAMA_BUILD_TESTS=OFF",
      "-DLLAMA_BUILD_EXAMPLES=OFF",
      // a native build uses every instruction the CPU lists, but some virtual machines list AMX
      // without enabling its register state: its first tile instruction kills llama-server (SIGILL)
      ...(arch() === "x64" ? [`-DCMAKE_C_FLAGS=${NO_AMX}`, `-DCMAKE_CXX_FLAGS=${NO_AMX}`] : []),
      ...(o.variant === "cuda" ? ["-DGGML_CUDA=ON"] : []),
      ...(o.variant === "vulkan" ? ["-DGGML_VULKAN=ON"] : []),
    ];
    progress.update(0, "configuring");
    await buildStep("cmake", ["-S", src, "-B", out, ...flags], { signal: o.signal, log: join(work, "configure.log") });
    const jobs = String(o.jobs ?? Math.max(1, cpus().length));
    await buildStep("cmake", ["--build", out, "--config", "Release", "-j", jobs, "--target", ...TARGETS], {
      signal: o.signal,
      log: join(work, "build.log"),
      onLine(line) {
        const m = /^\[\s*(\d+)%\]\s*(.*)$/.exec(line);
        if (m) progress.update(Number(m[1]) / 100, (m[2] ?? "").replace(/^Building \w+ object /, ""));
      },
    });
    const stage = join(work, "stage");
    await mkdir(stage);
    await rename(join(out, "bin"), join(stage, "bin"));
    const final = await engineDir(o.cache, o.tag, o.variant);
    const binDir = join(final, "bin");
    const engine: Engine = {
      tag: o.tag,
      variant: o.variant,
      dir: final,
      binDir,
      llamaServer: join(binDir, "llama-server"),
      rpcServer: join(binDir, "ggml-rpc-server"),
      builtAt: new Date().toISOString(),
    };
    for (const target of TARGETS) {
      if (!existsSync(join(stage, "bin", target))) throw new SharedLLMError("engine", `engine build produced no ${target}; see ${work}`);
    }
    await writeFile(join(stage, "engine.json"), `${JSON.stringify(engine, null, 2)}\n`);
    await rm(final, { recursive: true, force: true });
    await rename(stage, final);
    await rm(work, { recursive: true, force: true });
    progress.done(`built into ${final}`);
    return engine;
  } catch (err) {
    // keep the logs of a failed build for the user, but never in the final place
    if (o.signal?.aborted) await rm(work, { recursive: true, force: true });
    throw err;
  }
}

/** A small program over the libraries the engine ships (libllama, ggml): see ensureEngineTool. */
export interface EngineTool {
  /** its file name in the engine's bin folder */
  name: string;
  /** include folders, relative to the llama.cpp source */
  includes: string[];
  /** its source files, given the llama.cpp source folder */
  sources(src: string): string[];
  /** the engine's libraries it links, without `lib` (`llama`, `ggml`, ...) */
  libs: string[];
}

/**
 * A tool over the engine's own libraries, compiled first when it is not there yet; returns its
 * path. The engine build keeps no build tree, and building it again with one more target would
 * take minutes, so the tool is compiled on its own from the same bundled source against the
 * libraries the engine ships, in seconds, and put beside llama-server by an atomic rename of a
 * finished binary: the engine folder holds a working tool or none, and `engine.json` is untouched.
 */
export async function ensureEngineTool(engine: Engine, tool: EngineTool, signal?: AbortSignal): Promise<string> {
  const target = join(engine.binDir, tool.name);
  if (existsSync(target)) return target;
  const work = await mkdtemp(join(tmpdir(), `sharedllm-${tool.name}-`));
  try {
    const src = join(work, "src");
    await checkoutSource((await bundledSource()).bundle, src, signal);
    const out = join(engine.binDir, `.${tool.name}-${process.pid}`);
    await buildStep(
      process.env.CXX ?? "c++",
      [
        "-std=c++17",
        "-O2",
        ...tool.includes.flatMap((d) => ["-I", join(src, d)]),
        ...tool.sources(src),
        `-L${engine.binDir}`,
        // where the GNU linker finds what those libraries need in turn
        ...(process.platform === "linux" ? [`-Wl,-rpath-link,${engine.binDir}`] : []),
        ...tool.libs.map((l) => `-l${l}`),
        "-pthread",
        "-o",
        out,
      ],
      { signal, log: join(work, "build.log") },
    );
    await rename(out, target);
    return target;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The bundled llama.cpp source with our patches applied, into `dir` (which must not exist). */
export async function checkoutSource(bundle: string, dir: string, signal?: AbortSignal): Promise<void> {
  await buildStep("git", ["clone", "--quiet", bundle, dir], { signal });
  for (const patch of await patchFiles()) await buildStep("git", ["-C", dir, "apply", patch], { signal });
}

interface RunOptions {
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  log?: string;
  onLine?: (line: string) => void;
}

/** Runs a build step in its own process group, so an abort stops the whole compiler tree. */
export function buildStep(cmd: string, args: string[], o: RunOptions): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    if (o.signal?.aborted) return reject(o.signal.reason);
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], detached: true, env: o.env });
    const lines: string[] = [];
    let partial = "";
    const onData = (buf: Buffer) => {
      partial += buf.toString("utf8");
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) {
        lines.push(line);
        o.onLine?.(line);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const abort = () => {
      if (child.pid) {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    };
    o.signal?.addEventListener("abort", abort, { once: true });
    child.on("error", (err) => {
      o.signal?.removeEventListener("abort", abort);
      reject(new SharedLLMError("system", `could not run ${cmd}: ${err.message}. Install it (Debian: apt-get install ${cmd}).`));
    });
    child.on("close", async (code, sig) => {
      o.signal?.removeEventListener("abort", abort);
      if (o.log) await writeFile(o.log, lines.join("\n")).catch(() => {});
      if (o.signal?.aborted) return reject(o.signal.reason ?? new Error("aborted"));
      if (code === 0) return resolvePromise();
      const tail = lines.slice(-30).join("\n");
      reject(new SharedLLMError("engine", `${cmd} ${args.slice(0, 2).join(" ")} failed (${sig ?? `exit ${code}`}):\n${tail}`));
    });
  });
}

/** Work folders of builds whose process died (crash, SIGKILL) are removed. */
async function removeStaleWork(root: string): Promise<void> {
  for (const name of await readdir(root)) {
    const m = /^\.work-.*-(\d+)$/.exec(name);
    if (m && !isAlive(Number(m[1]))) await rm(join(root, name), { recursive: true, force: true });
  }
}
