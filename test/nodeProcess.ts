/**
 * A real `sharedllm node start` daemon in its own process group, as an owner runs it: its own
 * SHAREDLLM_HOME (a temp one unless given), told `pause|resume|leave` the way that command tells
 * it, and killed as a power cut would (its process group, llama-server with it).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { childStat, tempPaths, waitFor } from "./helpers.ts";

const BIN = join(import.meta.dirname, "..", "cli", "bin", "sharedllm.js");

export interface NodeProcess {
  id: string;
  home: string;
  process: ChildProcess;
  /** what it printed so far, stdout and stderr */
  output(): string;
  /** resolves when it exits, with its code and output */
  readonly exited: Promise<{ code: number | null; output: string }>;
  /** SIGKILLs its process group; resolves when it has exited */
  kill(): Promise<void>;
  /** `sharedllm node pause|resume|leave`, told as that command tells a running daemon */
  tell(command: "pause" | "resume" | "leave"): Promise<void>;
  /** its llama-server (a child of the daemon): pid, and CPU time so far in clock ticks */
  engine(): Promise<{ pid: number; ticks: number }>;
  /** kills it if it runs, and removes its temp home */
  cleanup(): Promise<void>;
}

export async function startNodeProcess(o: {
  coordinatorUrl: string;
  joinToken: string;
  /** more `node start` arguments (`--slots 1`, `--no-owner-first`, ...) */
  args?: string[];
  /** its SHAREDLLM_HOME (the same home is the same node again); default: a temp one, removed by cleanup */
  home?: string;
  /** more environment (a test-only switch) */
  env?: Record<string, string>;
  timeoutMs?: number;
}): Promise<NodeProcess> {
  const paths = o.home ? { home: o.home, cleanup: async () => {} } : await tempPaths("sharedllm-node-");
  const proc = spawn(
    process.execPath,
    [BIN, "node", "start", "--coordinator", o.coordinatorUrl, "--token", o.joinToken, ...(o.args ?? [])],
    {
      env: { ...process.env, ...o.env, SHAREDLLM_HOME: paths.home },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    },
  );
  let out = "";
  proc.stdout?.on("data", (b) => {
    out += b;
  });
  proc.stderr?.on("data", (b) => {
    out += b;
  });
  const exited = new Promise<{ code: number | null; output: string }>((resolve) =>
    proc.once("exit", (code) => resolve({ code, output: out })),
  );
  const kill = async () => {
    if (proc.pid && proc.exitCode === null && proc.signalCode === null) {
      process.kill(-proc.pid, "SIGKILL");
      await exited;
    }
  };
  try {
    const id = await waitFor(
      "a node daemon to serve",
      () => {
        if (proc.exitCode !== null) throw new Error(`the node daemon exited:\n${out}`);
        return /^node (0x[0-9a-f]{40}) serving/m.exec(out)?.[1];
      },
      o.timeoutMs ?? 180_000,
    );
    return {
      id,
      home: paths.home,
      process: proc,
      output: () => out,
      exited,
      kill,
      async tell(command) {
        await writeFile(join(paths.home, "node-command"), command);
        process.kill(proc.pid as number, "SIGUSR1");
      },
      engine: () => childStat(proc.pid as number, "llama-server"),
      async cleanup() {
        await kill();
        await paths.cleanup();
      },
    };
  } catch (err) {
    await kill();
    await paths.cleanup();
    throw err;
  }
}

/** After a failed test: the last lines each node daemon printed (its warnings and errors), on stderr. */
export function reportNodeFailure(ctx: { task: { result?: { state?: string } } }, nodes: Iterable<NodeProcess | undefined>): void {
  if (ctx.task.result?.state !== "fail") return;
  for (const n of nodes) {
    if (!n) continue;
    const tail = n.output().split("\n").slice(-40).join("\n");
    process.stderr.write(`--- node ${n.id} (exit ${n.process.exitCode ?? n.process.signalCode ?? "running"}):\n${tail}\n`);
  }
}
