import { chmod, stat, writeFile } from "node:fs/promises";
import { tempPaths } from "@sharedllm/testkit";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadNodeIdentity } from "./identity.js";

let tmp: Awaited<ReturnType<typeof tempPaths>>;
beforeEach(async () => {
  tmp = await tempPaths("identity-");
});
afterEach(() => tmp.cleanup());

describe("node identity", () => {
  it("creates a key once, readable only by its owner, and keeps it", async () => {
    const first = await loadNodeIdentity(tmp.home);
    expect(first?.created).toBe(true);
    expect(first?.nodeId).toMatch(/^0x[0-9a-f]{40}$/);
    expect((await stat(first?.file as string)).mode & 0o777).toBe(0o600);
    const again = await loadNodeIdentity(tmp.home);
    expect(again?.created).toBe(false);
    expect(again?.nodeId).toBe(first?.nodeId);
  });

  it("tightens a key file that others could read, and reports none when asked not to create", async () => {
    expect(await loadNodeIdentity(tmp.home, { create: false })).toBeUndefined();
    const id = await loadNodeIdentity(tmp.home);
    await chmod(id?.file as string, 0o644);
    await loadNodeIdentity(tmp.home);
    expect((await stat(id?.file as string)).mode & 0o777).toBe(0o600);
  });

  it("says which file is broken", async () => {
    await writeFile(`${tmp.home}/node-key.json`, "{not json");
    await expect(loadNodeIdentity(tmp.home)).rejects.toThrow(/node-key.json is unreadable/);
  });
});
