/**
 * The auditor's one-pass scorer (`score.cpp` beside this file): the model's raw next-token
 * distribution at chosen rows of a token sequence, from one pass of batched decodes cut at those
 * rows, with the engine's own libllama: the same distributions as a token-by-token replay, at the
 * cost of a prefill. llama-server cannot give it (it has no prompt log-probabilities, llama.cpp
 * #8942), and forcing the tokens through it one at a time costs about what generating them did.
 *
 * Compiled like llama-quantize (quantize.ts): one source file over the libraries the engine ships,
 * in seconds, put beside llama-server by an atomic rename of a finished binary. Run as one
 * process per model file (the weights loaded once), one JSON request per line on its stdin; it
 * ends with its stdin (and by a parent-death signal), so it never outlives the node.
 */
import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { SharedLLMError } from "../errors.js";
import { type Engine, ensureEngineTool } from "./build.js";

const SOURCE = join(import.meta.dirname, "score.cpp");
const hasSetpriv = spawnSync("setpriv", ["--help"], { stdio: "ignore" }).status === 0;

/** The engine's one-pass scorer, compiled first when it is not there yet; returns its path. */
export function ensureScorer(engine: Engine, signal?: AbortSignal): Promise<string> {
  return ensureEngineTool(
    engine,
    {
      name: "sharedllm-score",
      includes: ["include", "ggml/include", "vendor"],
      sources: () => [SOURCE],
      libs: ["llama", "ggml", "ggml-base"],
    },
    signal,
  );
}

/** One row's distribution: the target's rank among the top K (null outside) and log-probability, and the top K. */
export interface RowScore {
  rank: number | null;
  /** the target's log-probability, ranked or not (null when it underflows) */
  logprob: number | null;
  ids: number[];
  logprobs: number[];
}

/** The scorer could not score a request (it refused it, or the process died): the caller scores another way. */
export class ScorerFailed extends SharedLLMError {
  override name = "ScorerFailed";
  constructor(message: string) {
    super("engine", message);
  }
}

/** A running scorer for one model file; requests are answered one at a time, in order. */
export class Scorer {
  private queue: Promise<unknown> = Promise.resolve();
  private waiting: ((line: string | undefined) => void)[] = [];
  private exited = false;
  private stderr: string[] = [];

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    /** the model's vocabulary size and the scorer's context */
    readonly vocab: number,
    readonly contextSize: number,
  ) {}

  /** Starts a scorer of `modelPath` with a context of `contextSize` tokens on `threads` threads; resolves once the model is loaded. */
  static async start(o: {
    engine: Engine;
    modelPath: string;
    contextSize: number;
    threads: number;
    signal?: AbortSignal;
  }): Promise<Scorer> {
    const bin = await ensureScorer(o.engine, o.signal);
    const args = [o.modelPath, String(o.contextSize), String(o.threads)];
    const [cmd, argv] = hasSetpriv ? ["setpriv", ["--pdeathsig", "SIGKILL", "--", bin, ...args]] : [bin, args];
    const child = spawn(cmd, argv, {
      env: { ...process.env, LD_LIBRARY_PATH: [o.engine.binDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(":") },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const lines = createInterface({ input: child.stdout });
    const stderr: string[] = [];
    child.stderr.on("data", (b: Buffer) => {
      stderr.push(...b.toString("utf8").split("\n").filter(Boolean));
      stderr.splice(0, Math.max(0, stderr.length - 20));
    });
    const first = await new Promise<string | undefined>((resolve) => {
      lines.once("line", resolve);
      child.once("exit", () => resolve(undefined));
      child.once("error", () => resolve(undefined));
    });
    const hello = first ? (JSON.parse(first) as { ready?: boolean; n_vocab?: number; n_ctx?: number }) : undefined;
    if (!hello?.ready || typeof hello.n_vocab !== "number" || typeof hello.n_ctx !== "number") {
      child.kill("SIGKILL");
      throw new ScorerFailed(`the scorer did not start: ${stderr.slice(-5).join(" | ") || "no output"}`);
    }
    const scorer = new Scorer(child, hello.n_vocab, hello.n_ctx);
    scorer.stderr = stderr;
    lines.on("line", (line) => scorer.waiting.shift()?.(line));
    child.once("exit", () => {
      scorer.exited = true;
      for (const w of scorer.waiting.splice(0)) w(undefined);
    });
    // a write to a scorer that died fails its request (below), not the process
    child.stdin.on("error", () => {});
    return scorer;
  }

  get alive(): boolean {
    return !this.exited;
  }

  /**
   * The distribution after `tokens[0..row]` at each of `rows` (ascending), with `targets[i]`
   * ranked at `rows[i]`, from one batched decode. Throws ScorerFailed when the scorer refuses the
   * request or is gone.
   */
  score(tokens: readonly number[], rows: readonly number[], targets: readonly number[], top: number): Promise<RowScore[]> {
    const turn = this.queue.then(() => this.ask({ tokens, rows, targets, top }));
    this.queue = turn.catch(() => {});
    return turn;
  }

  private async ask(request: object): Promise<RowScore[]> {
    if (this.exited) throw new ScorerFailed("the scorer is not running");
    const answer = new Promise<string | undefined>((resolve) => this.waiting.push(resolve));
    this.child.stdin.write(`${JSON.stringify(request)}\n`);
    const line = await answer;
    if (line === undefined) throw new ScorerFailed(`the scorer exited: ${this.stderr.slice(-5).join(" | ")}`);
    const parsed = JSON.parse(line) as { scores?: RowScore[]; error?: string };
    if (!parsed.scores) throw new ScorerFailed(`the scorer refused a request: ${parsed.error ?? line.slice(0, 200)}`);
    return parsed.scores;
  }

  /** Ends the scorer: its stdin closed, then SIGTERM, then SIGKILL. */
  async stop(timeoutMs = 5_000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((r) => this.child.once("exit", () => r()));
    this.child.stdin.end();
    const term = setTimeout(() => this.child.kill("SIGTERM"), 1_000);
    const kill = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(term);
    clearTimeout(kill);
  }
}
