/**
 * Supervises one child process (llama-server, rpc-server): ready means its health
 * check answers; a process that exits during start-up fails fast with its log
 * tail; an unexpected exit later is restarted with exponential back-off; stop asks
 * with SIGTERM, then SIGKILLs after a timeout. Children get a parent-death signal
 * (setpriv --pdeathsig), so even a SIGKILLed daemon leaves no orphan behind.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { EventEmitter } from "node:events";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { dirname } from "node:path";
import { SharedLLMError } from "../errors.js";

export interface SupervisorOptions {
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** appended with the child's stdout and stderr */
  logFile: string;
  /** resolves true once the process serves */
  healthCheck: () => Promise<boolean>;
  /** arguments decided anew before every (re)start, appended to args (e.g. a cluster's current split) */
  prepare?: () => Promise<string[]>;
  startTimeoutMs?: number;
  /** first restart delay; doubles per failure up to maxBackoffMs */
  backoffMs?: number;
  maxBackoffMs?: number;
  stopTimeoutMs?: number;
}

const hasSetpriv = spawnSync("setpriv", ["--help"], { stdio: "ignore" }).status === 0;

export class Supervisor extends EventEmitter<{
  ready: [];
  exit: [code: number | null, signal: string | null];
  restarting: [delayMs: number];
}> {
  private child: ChildProcess | undefined;
  private log: WriteStream | undefined;
  private tail: string[] = [];
  private stopping = false;
  private backoff: number;
  private restartTimer: NodeJS.Timeout | undefined;
  private _ready = false;
  /** how many times the process was restarted after an unexpected exit */
  restarts = 0;

  constructor(readonly opts: SupervisorOptions) {
    super();
    this.backoff = opts.backoffMs ?? 500;
  }

  get ready(): boolean {
    return this._ready;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Resolves true once the process is (again) ready, false on timeout, abort or stop. */
  whenReady(timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this._ready) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.off("ready", onReady);
        signal?.removeEventListener("abort", onAbort);
        resolve(ok);
      };
      const onReady = () => done(true);
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.on("ready", onReady);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Resolves once the supervisor has seen its process exit (at once if it is not ready), or after timeoutMs. */
  whenExited(timeoutMs: number): Promise<void> {
    if (!this._ready) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.off("exit", done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.on("exit", done);
    });
  }

  /** Ends the running process so that it starts again (with `prepare` run anew), as after a crash. */
  restart(): void {
    if (!this._ready || !this.child) return;
    this._ready = false;
    this.child.kill("SIGTERM");
  }

  /** The last lines the process printed, for error messages. */
  logTail(lines = 20): string {
    return this.tail.slice(-lines).join("\n");
  }

  /** Starts the process and resolves when its health check passes. */
  async start(): Promise<void> {
    this.stopping = false;
    mkdirSync(dirname(this.opts.logFile), { recursive: true });
    this.log ??= createWriteStream(this.opts.logFile, { flags: "a" });
    await this.launch();
  }

  private async launch(): Promise<void> {
    const { command } = this.opts;
    const args = [...this.opts.args, ...(this.opts.prepare ? await this.opts.prepare() : [])];
    if (this.stopping) throw new Error(`${this.opts.name} is stopping`);
    const [cmd, argv] = hasSetpriv ? ["setpriv", ["--pdeathsig", "SIGKILL", "--", command, ...args]] : [command, args];
    this.log?.write(`\n--- ${new Date().toISOString()} starting ${command} ${args.join(" ")}\n`);
    const child = spawn(cmd, argv, { env: this.opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const onData = (b: Buffer) => {
      this.log?.write(b);
      const lines = b.toString("utf8").split("\n").filter(Boolean);
      this.tail.push(...lines);
      if (this.tail.length > 200) this.tail.splice(0, this.tail.length - 200);
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);

    return new Promise<void>((resolve, reject) => {
      let starting = true;
      const deadline = Date.now() + (this.opts.startTimeoutMs ?? 120_000);
      child.once("error", (err) => {
        if (starting) {
          starting = false;
          reject(new SharedLLMError("engine", `${this.opts.name} could not start: ${err.message}`));
        }
      });
      child.once("exit", (code, signal) => {
        this._ready = false;
        this.log?.write(`--- exited (${signal ?? `code ${code}`})\n`);
        if (this.child === child) this.child = undefined;
        if (starting) {
          starting = false;
          reject(
            new SharedLLMError("engine", `${this.opts.name} exited during start-up (${signal ?? `code ${code}`}):\n${this.logTail()}`),
          );
          return;
        }
        if (this.stopping) return;
        this.emit("exit", code, signal);
        this.scheduleRestart();
      });
      const poll = async () => {
        if (!starting) return;
        if (await this.opts.healthCheck().catch(() => false)) {
          if (!starting) return;
          starting = false;
          this._ready = true;
          this.emit("ready");
          resolve();
          return;
        }
        if (Date.now() > deadline) {
          starting = false;
          child.kill("SIGKILL");
          reject(new SharedLLMError("engine", `${this.opts.name} did not become healthy in time:\n${this.logTail()}`));
          return;
        }
        setTimeout(poll, 100);
      };
      void poll();
    });
  }

  private scheduleRestart(): void {
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.opts.maxBackoffMs ?? 30_000);
    this.emit("restarting", delay);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopping) return;
      this.restarts++;
      this.launch().then(
        () => {
          // a process that stays up for a minute earns a fresh back-off
          setTimeout(() => {
            if (this._ready) this.backoff = this.opts.backoffMs ?? 500;
          }, 60_000).unref();
        },
        () => {
          if (!this.stopping) this.scheduleRestart();
        },
      );
    }, delay);
  }

  /** SIGTERM, then SIGKILL after stopTimeoutMs; resolves once the process is reaped. */
  async stop(): Promise<void> {
    this.stopping = true;
    this._ready = false;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), this.opts.stopTimeoutMs ?? 5_000);
      await exited;
      clearTimeout(timer);
    }
    await new Promise<void>((r) => (this.log ? this.log.end(r) : r()));
    this.log = undefined;
  }
}
