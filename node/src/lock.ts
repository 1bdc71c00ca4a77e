/**
 * Cross-process locks and atomic files in the shared cache, so that several
 * instances on one machine can build, pull and write manifests safely.
 */
import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";

/** A lock folder holding the owner's pid; a lock whose owner is dead is taken over. */
export async function acquireLock(path: string, signal?: AbortSignal): Promise<() => Promise<void>> {
  let emptySince = 0;
  for (;;) {
    try {
      await mkdir(path);
      await writeFile(join(path, "pid"), String(process.pid));
      return () => rm(path, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const owner = Number(await readFile(join(path, "pid"), "utf8").catch(() => "0"));
    // a lock without a pid is one being created, or one whose creator died right away
    if (!owner) emptySince ||= Date.now();
    if ((owner && !isAlive(owner)) || (!owner && Date.now() - emptySince > 10_000)) {
      await rm(path, { recursive: true, force: true });
      continue;
    }
    if (signal?.aborted) throw signal.reason;
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Writes a file so that readers see either the old or the new content, never a part. */
export async function writeFileAtomic(path: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, data, { mode });
  await rename(tmp, path);
}
