/**
 * The model catalogue: the models this coordinator knows, and where nodes may pull them from.
 * Sources are the operator's (`CoordinatorOptions.models`), never a node's: a node that could
 * name a model's source or hash would have idle honest nodes pull whatever it likes. A node may
 * serve a pinned model only with the pinned sha256. Models that nobody pinned are known by what
 * nodes serve (id and sha256, for 404 vs 503), but are never loaded on demand.
 */
import type { ServedModel } from "@sharedllm/protocol";

/** A model the operator lets nodes be asked to load: its id, where it comes from, its file's sha256. */
export interface PinnedModel {
  id: string;
  /** `default` or `hf:<org>/<repo>/<file>` (never a path: it would mean nothing on another machine) */
  source: string;
  sha256: string;
  sizeBytes?: number;
}

/** A model this coordinator has seen served or has pinned; `source` is set only for pinned models. */
export interface KnownModel {
  id: string;
  sha256: string;
  source?: string;
  sizeBytes?: number;
}

/** The catalogue at start: every model seen before (without any source), then the operator's pins over them. */
export function catalogue(pins: readonly PinnedModel[], seen: readonly KnownModel[]): Map<string, KnownModel> {
  const known = new Map<string, KnownModel>(seen.map((m) => [m.id, { id: m.id, sha256: m.sha256, sizeBytes: m.sizeBytes }]));
  for (const p of pins) known.set(p.id, { id: p.id, sha256: p.sha256.toLowerCase(), source: p.source, sizeBytes: p.sizeBytes });
  return known;
}

/** The models a node says it serves, less those it serves under a pinned id with another file. */
export function admitModels(
  models: readonly ServedModel[],
  known: ReadonlyMap<string, KnownModel>,
): { admitted: ServedModel[]; refused: { id: string; reason: string }[] } {
  const admitted: ServedModel[] = [];
  const refused: { id: string; reason: string }[] = [];
  for (const m of models) {
    const pin = known.get(m.id);
    if (pin?.source && pin.sha256 !== m.sha256) {
      refused.push({ id: m.id, reason: `its file (sha256 ${m.sha256}) is not the pinned one (${pin.sha256})` });
    } else {
      admitted.push(m);
    }
  }
  return { admitted, refused };
}
