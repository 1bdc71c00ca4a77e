import { describe, expect, it } from "vitest";
import { admitModels, catalogue } from "./catalogue.js";

const pinned = { id: "m", source: "default", sha256: "a".repeat(64) };
const served = (id: string, sha256: string) => ({ id, sha256, contextSize: 2048 });

describe("model catalogue", () => {
  it("keeps no source of a seen model, and the operator's pin wins", () => {
    const known = catalogue(
      [pinned],
      [
        { id: "m", sha256: "b".repeat(64), source: "hf:evil/e/e.gguf" },
        { id: "x", sha256: "c".repeat(64), source: "hf:evil/e/x.gguf" },
      ],
    );
    expect(known.get("m")).toMatchObject({ source: "default", sha256: "a".repeat(64) });
    expect(known.get("x")?.source).toBeUndefined();
  });

  it("admits a pinned model only with the pinned file; unpinned models as they come", () => {
    const known = catalogue([pinned], []);
    const { admitted, refused } = admitModels(
      [served("m", "b".repeat(64)), served("y", "c".repeat(64)), served("m", "a".repeat(64))],
      known,
    );
    expect(admitted.map((m) => m.id)).toEqual(["y", "m"]);
    expect(refused).toEqual([{ id: "m", reason: expect.stringContaining("not the pinned one") }]);
  });
});
