/**
 * The operator's model pins: the models a coordinator may ask its nodes to load, with where
 * they come from and the sha256 of their file. The default model is always pinned; more come
 * from `$SHAREDLLM_HOME/models.json` (`[{ "id", "source", "sha256" }]`). A pin never names a
 * local path: a path on the coordinator's machine means nothing on a node, and a node must
 * never be told to serve a file from its own disk.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ModelError } from "./modelError.js";
import { DEFAULT_MODEL, parseSource } from "./sources.js";

export interface ModelPin {
  id: string;
  source: string;
  sha256: string;
  sizeBytes?: number;
}

/** Checks one pin as written by an operator; throws a ModelError that says what to fix. */
export function checkPin(p: unknown, where: string): ModelPin {
  const pin = p as Partial<ModelPin>;
  if (typeof pin?.id !== "string" || !pin.id || typeof pin.source !== "string") {
    throw new ModelError(`${where}: each model needs an "id" and a "source" (default or hf:<org>/<repo>/<file>.gguf)`);
  }
  if (typeof pin.sha256 !== "string" || !/^[0-9a-f]{64}$/.test(pin.sha256)) {
    throw new ModelError(`${where}: model "${pin.id}" needs the "sha256" of its file (64 lower-case hex digits)`);
  }
  if (parseSource(pin.source).kind === "local") {
    throw new ModelError(`${where}: model "${pin.id}" has a local path as its source; nodes can only pull "default" or hf: sources`);
  }
  return { id: pin.id, source: pin.source, sha256: pin.sha256, ...(typeof pin.sizeBytes === "number" ? { sizeBytes: pin.sizeBytes } : {}) };
}

/** The default model's pin and the operator's own, from `<home>/models.json` when it exists. */
export async function loadPins(home: string): Promise<ModelPin[]> {
  const pins = new Map<string, ModelPin>([
    [DEFAULT_MODEL.id, { id: DEFAULT_MODEL.id, source: "default", sha256: DEFAULT_MODEL.sha256, sizeBytes: DEFAULT_MODEL.size }],
  ]);
  const file = join(home, "models.json");
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return [...pins.values()];
  }
  let listed: unknown;
  try {
    listed = JSON.parse(text);
  } catch (err) {
    throw new ModelError(`${file} is not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(listed)) throw new ModelError(`${file} must hold a JSON array of { "id", "source", "sha256" }`);
  for (const p of listed) {
    const pin = checkPin(p, file);
    pins.set(pin.id, pin);
  }
  return [...pins.values()];
}

/**
 * Whether a node may do what a coordinator's `model.load` asks: the source must be one it can
 * pull (never a path on this machine), and a model it already holds under that id must be the
 * same file. Returns the reason to refuse, or undefined.
 */
export function refuseLoad(frame: { model: string; source: string; sha256: string }, held?: { sha256: string }): string | undefined {
  let kind: string;
  try {
    kind = parseSource(frame.source).kind;
  } catch (err) {
    return (err as Error).message;
  }
  if (kind === "local") return `a coordinator may not have this node load a file from its own disk (${frame.source})`;
  if (held && held.sha256 !== frame.sha256) {
    return `this node holds another file as "${frame.model}" (sha256 ${held.sha256}, asked for ${frame.sha256})`;
  }
  return undefined;
}
