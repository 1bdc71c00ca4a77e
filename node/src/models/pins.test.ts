import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadPins, refuseLoad } from "./pins.js";
import { DEFAULT_MODEL } from "./sources.js";

const sha = "a".repeat(64);
let home: string | undefined;
afterEach(async () => {
  if (home) await rm(home, { recursive: true, force: true });
});

async function pinsFrom(content: string) {
  home = await mkdtemp(join(tmpdir(), "pins-"));
  await writeFile(join(home, "models.json"), content);
  return loadPins(home);
}

describe("model pins", () => {
  it("always pins the default model, and adds or overrides from models.json", async () => {
    const pins = await pinsFrom(JSON.stringify([{ id: "qwen", source: "hf:org/repo/qwen.gguf", sha256: sha }]));
    expect(pins.map((p) => [p.id, p.source])).toEqual([
      [DEFAULT_MODEL.id, "default"],
      ["qwen", "hf:org/repo/qwen.gguf"],
    ]);
  });

  it.each([
    [`[{"id":"x","source":"/srv/models/x.gguf","sha256":"${sha}"}]`, /local path/],
    ['[{"id":"x","source":"hf:o/r/x.gguf","sha256":"abc"}]', /sha256/],
    ['[{"source":"default"}]', /"id"/],
    ['{"id":"x"}', /JSON array/],
    ["not json", /not valid JSON/],
  ])("refuses %s", async (content, message) => {
    await expect(pinsFrom(content)).rejects.toThrow(message);
  });
});

describe("refuseLoad", () => {
  const frame = { model: "m", source: "hf:org/repo/m.gguf", sha256: sha };

  it("lets a node pull a pinned source", () => {
    expect(refuseLoad(frame)).toBeUndefined();
    expect(refuseLoad(frame, { sha256: sha })).toBeUndefined();
  });

  it("never loads a file from the node's own disk, nor another file under a held id", () => {
    expect(refuseLoad({ ...frame, source: "/home/owner/private.gguf" })).toMatch(/own disk/);
    expect(refuseLoad({ ...frame, source: "file:///etc/x.gguf" })).toMatch(/unsupported/);
    expect(refuseLoad(frame, { sha256: "b".repeat(64) })).toMatch(/another file/);
  });
});
