/**
 * The audit verdict's calibrated thresholds: coordinator/audit-thresholds.json, written by
 * bench/auditCalibrate.ts from honest runs, per model file (sha256) and backend (the engine
 * variant that served and audited the runs, e.g. `cpu`), each with how it was measured. A model
 * file or backend that was never calibrated gets UNCALIBRATED: the same checks with wider margins.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import type { Judge } from "./audits.js";
import { judge, samplingOf, type Thresholds } from "./verdict.js";

const thresholdsSchema = z.object({
  tieMargin: z.number().nonnegative(),
  minPSlack: z.number().nonnegative(),
  topKSlack: z.number().nonnegative(),
  topPSlack: z.number().nonnegative(),
  floorLogprob: z.number().max(0),
  minZ: z.number().max(0),
  maxZTail: z.number().nonnegative(),
  minZPositions: z.number().int().positive(),
  maxUnrankedShare: z.number().min(0).max(1),
  minMeanLogprob: z.number().max(0),
}) satisfies z.ZodType<Thresholds>;

export const thresholdsFileSchema = z.object({
  version: z.literal(1),
  models: z.record(
    z.string().regex(/^[0-9a-f]{64}$/),
    z.record(z.string(), z.looseObject({ thresholds: thresholdsSchema, measured: z.looseObject({ date: z.string() }) })),
  ),
});
export type ThresholdsFile = z.infer<typeof thresholdsFileSchema>;

/** The thresholds file of this package. */
export const THRESHOLDS_FILE = new URL("../../audit-thresholds.json", import.meta.url);

/**
 * For a model file or backend no honest runs were measured on: the checks keep their shape, with
 * margins wider than any calibration showed was needed (a rounding difference between backends
 * or CPUs is at most hundredths of a nat; a cheaper quantisation's is a nat and more).
 */
export const UNCALIBRATED: Thresholds = {
  tieMargin: 0.5,
  minPSlack: 0.25,
  topKSlack: 0.25,
  topPSlack: 0.05,
  floorLogprob: -30,
  minZ: -8,
  maxZTail: 8,
  minZPositions: 24,
  maxUnrankedShare: 0.5,
  minMeanLogprob: -8,
};

/** Reads and checks a thresholds file; throws with what is wrong in it. */
export function loadThresholds(file: string | URL = THRESHOLDS_FILE): ThresholdsFile {
  const parsed = thresholdsFileSchema.safeParse(JSON.parse(readFileSync(file, "utf8")));
  if (!parsed.success) throw new Error(`${String(file)} is not an audit thresholds file: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

/** The thresholds for audits of a model file on a backend, and whether they were calibrated. */
export function thresholdsFor(file: ThresholdsFile, sha256: string, backend: string): { thresholds: Thresholds; calibrated: boolean } {
  const entry = file.models[sha256]?.[backend];
  return entry ? { thresholds: entry.thresholds, calibrated: true } : { thresholds: UNCALIBRATED, calibrated: false };
}

/** The judge audits use by default: the verdict, with the thresholds calibrated for the model file and the auditor's backend. */
export function calibratedJudge(file: ThresholdsFile = loadThresholds()): Judge {
  return ({ request, scores, modelSha256, backend }) => {
    const v = judge(scores, samplingOf(request), thresholdsFor(file, modelSha256, backend).thresholds);
    return v.pass ? { pass: true } : { pass: false, reason: v.reason };
  };
}
