import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ensureEngine, findEngine } from "./build.js";

let cache: string;
beforeEach(async () => {
  cache = await mkdtemp(join(tmpdir(), "engine-"));
});
afterEach(() => rm(cache, { recursive: true, force: true }));

describe("engine build", () => {
  it("an interrupted build leaves nothing that a later run would take as built", async () => {
    const ctl = new AbortController();
    const build = ensureEngine({
      cache,
      variant: "cpu",
      signal: ctl.signal,
      progress: () => ({
        update: (_f, detail) => {
          if (detail === "configuring") ctl.abort(new Error("test interrupt"));
        },
        done() {},
      }),
    });
    await expect(build).rejects.toThrow("test interrupt");
    expect(await findEngine(cache, "cpu")).toBeUndefined();
    expect(await readdir(join(cache, "engine"))).toEqual([]);
  });

  it("a failed build reports the tool's output and is not cached", async () => {
    // no Vulkan SDK here: CMake's configure step fails
    const err = await ensureEngine({ cache, variant: "vulkan" }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/cmake -S .* failed[\s\S]*Vulkan/i);
    expect(await findEngine(cache, "vulkan")).toBeUndefined();
    expect(existsSync(join(cache, "engine", "v"))).toBe(false);
  });
});
