/**
 * Hands two connected sockets to sharedllm-relay (relay.c), built on first use with the
 * machine's C compiler into the shared cache. Where no compiler is found, or the link uses TLS
 * (the bytes must be encrypted in this process), the sockets are piped in Node instead.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import type { Socket } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const SOURCE = fileURLToPath(new URL("./relay.c", import.meta.url));
const hasSetpriv = spawnSync("setpriv", ["--help"], { stdio: "ignore" }).status === 0;
let building: Promise<string | undefined> | undefined;

/** The relay binary in `cache`, compiled when missing; undefined when it cannot be built here. */
export function relayBinary(cache: string): Promise<string | undefined> {
  building ??= (async () => {
    const hash = createHash("sha256").update(readFileSync(SOURCE)).digest("hex").slice(0, 16);
    const dir = join(cache, "relay", hash);
    const binary = join(dir, "sharedllm-relay");
    if (existsSync(binary)) return binary;
    await mkdir(dir, { recursive: true });
    const tmp = `${binary}.${process.pid}.tmp`;
    const cc = spawnSync(process.env.CC ?? "cc", ["-O2", "-o", tmp, SOURCE], { encoding: "utf8" });
    if (cc.status !== 0) {
      await rm(tmp, { force: true });
      return undefined;
    }
    await rename(tmp, binary);
    return binary;
  })();
  return building;
}

export interface Relayed {
  /** resolves when both directions are closed, with the bytes moved a -> b and b -> a */
  done: Promise<{ aToB: number; bToA: number }>;
  /** ends the relay (and so both connections) now */
  close(): void;
}

/**
 * Moves bytes between `a` and `b` until both are closed. Both sockets must be paused with nothing
 * read and not yet forwarded; afterwards this process holds neither.
 */
export function relay(a: Socket, b: Socket, binary: string | undefined): Relayed {
  if (!binary) return pipeInNode(a, b);
  const [cmd, args] = hasSetpriv ? ["setpriv", ["--pdeathsig", "SIGKILL", binary]] : [binary, []];
  const child = spawn(cmd, args as string[], { stdio: ["ignore", "ignore", "pipe", a, b] });
  a.destroy();
  b.destroy();
  let report = "";
  child.stderr?.on("data", (d) => {
    report += d;
  });
  const done = new Promise<{ aToB: number; bToA: number }>((resolve) =>
    child.on("close", () => {
      const m = /moved (\d+) (\d+)/.exec(report);
      resolve({ aToB: Number(m?.[1] ?? 0), bToA: Number(m?.[2] ?? 0) });
    }),
  );
  return { done, close: () => child.kill("SIGKILL") };
}

function pipeInNode(a: Socket, b: Socket): Relayed {
  a.setNoDelay(true);
  b.setNoDelay(true);
  let aToB = 0;
  let bToA = 0;
  a.on("data", (d: Buffer) => {
    aToB += d.length;
  });
  b.on("data", (d: Buffer) => {
    bToA += d.length;
  });
  a.pipe(b);
  b.pipe(a);
  a.on("error", () => b.destroy());
  b.on("error", () => a.destroy());
  a.resume();
  b.resume();
  const done = Promise.all([new Promise((r) => a.once("close", r)), new Promise((r) => b.once("close", r))]).then(() => ({ aToB, bToA }));
  return {
    done,
    close: () => {
      a.destroy();
      b.destroy();
    },
  };
}
