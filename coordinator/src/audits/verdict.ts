/**
 * The verdict on an audit: whether a trusted auditor's scores of a node's claimed output (its own
 * copy of the model's raw next-token distribution at each audited position, protocol
 * `auditScoreSchema`) are what an honest run of the job shows. Pure: scores, the job's sampling
 * parameters and the model's calibrated thresholds (audit-thresholds.json, from
 * bench/auditCalibrate.ts) in; pass, or fail with the reason and the worst position's figures.
 *
 * What a job's parameters let the verdict check:
 * - greedy (temperature <= 0): each claimed token is the auditor's top token, except where the
 *   two are near-tied (batch size and slot count change greedy choices there, llama.cpp #7052).
 * - sampled (temperature > 0): llama-server truncates the raw distribution before it applies
 *   the temperature (top_k, then top_p, then min_p), so each claimed token lies within the job's
 *   own top_k, top_p and min_p bounds whatever its temperature; a token below a floor fails too.
 *   With the auditor's top-K log-probabilities, the claimed tokens' summed log-probability is
 *   set against what the job's own sampling distribution gives: an honest run's is a sum of
 *   zero-mean terms (each token is drawn from that distribution given the tokens before it), a
 *   run from another model's distribution falls below it; the figure is in standard deviations.
 * - constrained (repeat, presence or frequency penalties, typical_p, a response format or tools,
 *   i.e. a grammar): the engine reshapes the distribution in ways the raw scores do not show; only
 *   gross checks hold (most claimed tokens among the auditor's top K, a mean log-probability far
 *   above random tokens').
 * - biased (logit_bias): any token can be forced; nothing is judged.
 */
import type { AuditScore } from "@sharedllm/protocol";

/** llama-server's sampling defaults: what a request that leaves a field out gets. */
export const ENGINE_SAMPLING_DEFAULTS = { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05 } as const;

/** The sampling parameters of a job that bear on its verdict. */
export interface Sampling {
  temperature: number;
  /** <= 0: off */
  topK: number;
  /** >= 1: off */
  topP: number;
  /** <= 0: off */
  minP: number;
  /** request fields that reshape the distribution beyond what the raw scores show */
  constrainedBy: string[];
  /** logit_bias: any token can be forced */
  biased: boolean;
}

const num = (v: unknown, fallback: number): number => (typeof v === "number" && Number.isFinite(v) ? v : fallback);

/** The sampling of a job's engine request (protocol `engineRequest`), with llama-server's defaults. */
export function samplingOf(request: Record<string, unknown>): Sampling {
  const constrainedBy: string[] = [];
  if (num(request.repeat_penalty, 1) !== 1) constrainedBy.push("repeat_penalty");
  if (num(request.presence_penalty, 0) !== 0) constrainedBy.push("presence_penalty");
  if (num(request.frequency_penalty, 0) !== 0) constrainedBy.push("frequency_penalty");
  if (num(request.typical_p, 1) < 1) constrainedBy.push("typical_p");
  const format = request.response_format as { type?: unknown } | undefined;
  if (format && typeof format === "object" && format.type !== "text") constrainedBy.push("response_format");
  if (Array.isArray(request.tools) && request.tools.length > 0) constrainedBy.push("tools");
  const bias = request.logit_bias;
  const biased = !!bias && typeof bias === "object" && Object.keys(bias).length > 0;
  return {
    temperature: num(request.temperature, ENGINE_SAMPLING_DEFAULTS.temperature),
    topK: num(request.top_k, ENGINE_SAMPLING_DEFAULTS.top_k),
    topP: num(request.top_p, ENGINE_SAMPLING_DEFAULTS.top_p),
    minP: num(request.min_p, ENGINE_SAMPLING_DEFAULTS.min_p),
    constrainedBy,
    biased,
  };
}

/** Per model file and backend, from honest runs (bench/auditCalibrate.ts). Log-probabilities in nats. */
export interface Thresholds {
  /** greedy: the widest gap between the auditor's top token and a claimed one that is not it, for a near-tie */
  tieMargin: number;
  /** sampled: how far below the job's min_p bound a claimed token may lie by rounding (nats) */
  minPSlack: number;
  /** sampled: how far below the job's top_k-th token a claimed token may lie by rounding (nats) */
  topKSlack: number;
  /** sampled: how much probability past the job's top_p nucleus */
  topPSlack: number;
  /** sampled: a claimed token less likely than this fails */
  floorLogprob: number;
  /** sampled: the lowest summed log-probability an honest run shows, in standard deviations of the job's own sampling */
  minZ: number;
  /** sampled: the most claimed tokens outside the top K, in standard deviations over what the job's sampling puts there */
  maxZTail: number;
  /** sampled: positions whose tokens were not certain, needed before the summed check speaks */
  minZPositions: number;
  /** constrained: the largest share of claimed tokens outside the auditor's top K */
  maxUnrankedShare: number;
  /** constrained: the lowest mean claimed log-probability (an unranked token counts as the K-th's) */
  minMeanLogprob: number;
}

export type Mode = "greedy" | "sampled" | "constrained" | "biased";

/** The figures the verdict weighs; null where the mode or the scores do not give one. */
export interface Figures {
  positions: number;
  /** greedy: the widest gap (nats) from the auditor's top token to a claimed token that is not it */
  worstGap: number | null;
  /** sampled: the furthest a claimed token lies outside the job's min_p bound (nats; > 0 outside) */
  minPExcess: number | null;
  /** sampled: the furthest a claimed token lies below the job's top_k-th token (nats; > 0 outside) */
  topKExcess: number | null;
  /** sampled: the furthest past the job's top_p nucleus (probability; > 0 outside) */
  topPExcess: number | null;
  /** the least likely claimed token's log-probability (an unranked one: at most the K-th's, taken as that) */
  minLogprob: number;
  /** sampled: the claimed tokens' summed log-probability against the job's sampling, in standard deviations */
  z: number | null;
  /** sampled: the positions the z figure stands on (those whose token was not certain) */
  zPositions: number;
  /** sampled: how many standard deviations the count of claimed tokens that are the auditor's top lies off the job's sampling */
  zTop: number | null;
  /** sampled, where the truncation keeps tokens outside the top K: the same for the count of claimed tokens out there */
  zTail: number | null;
  offTopShare: number;
  unrankedShare: number;
  /** an unranked token counts as the K-th's log-probability (an upper bound) */
  meanLogprob: number;
}

export type Check = "greedy" | "top_k" | "min_p" | "top_p" | "floor" | "likelihood" | "tail" | "unranked" | "mean";

export type Verdict =
  | { pass: true; mode: Mode; checked: Check[]; figures: Figures }
  | { pass: false; mode: Mode; failed: Check; reason: string; worst: AuditScore; figures: Figures };

export function modeOf(sampling: Sampling): Mode {
  if (sampling.biased) return "biased";
  if (sampling.constrainedBy.length) return "constrained";
  return sampling.temperature <= 0 ? "greedy" : "sampled";
}

/** A claimed token's log-probability; an unranked one's is at most the K-th's, taken as that. */
const claimedLogprob = (s: AuditScore): number => s.logprob ?? s.floorLogprob;

/** The sampling distribution of one position over the auditor's top K (and the rest as one bucket). */
interface Position {
  /** log-probabilities of the kept tokens, best first, and their weight under the job's temperature */
  kept: { logprob: number; weight: number }[];
  /** the kept tokens outside the top K as one bucket: its weight (their log-probabilities are at most the K-th's) */
  tailWeight: number;
  /** probability above each rank (exclusive), over the candidates top_p sees; the last: above any unranked token */
  above: number[];
}

/**
 * The job's sampling distribution at a position, from the auditor's top-K log-probabilities:
 * llama-server's chain with its default order (top_k, then top_p over the remaining candidates
 * renormalised, then min_p against the top), then the temperature. The candidates outside the
 * top K that the truncation keeps are one bucket at the K-th's log-probability (a bound).
 */
function distribution(top: number[], s: Sampling): Position {
  const probs = top.map(Math.exp);
  const listed = probs.reduce((a, b) => a + b, 0);
  const k = s.topK > 0 ? s.topK : Number.POSITIVE_INFINITY;
  let n = Math.min(top.length, k);
  // what the K listed tokens leave, of which top_k keeps at most its remaining count, each at most the K-th's
  let tail = k > top.length ? Math.min(Math.max(0, 1 - listed), (k - top.length) * (probs[probs.length - 1] as number)) : 0;
  // top_p renormalises over what top_k left (all of it when top_k is off or wider than K)
  const pool = probs.slice(0, n).reduce((a, b) => a + b, 0) + tail;
  const above: number[] = [];
  let cum = 0;
  for (let i = 0; i < top.length; i++) {
    above.push(cum / pool);
    cum += probs[i] as number;
  }
  above.push(cum / pool);
  if (s.topP < 1) {
    let kept = 0;
    let mass = 0;
    while (kept < n && mass / pool < s.topP) mass += probs[kept++] as number;
    if (mass / pool >= s.topP) {
      n = kept;
      tail = 0;
    }
  }
  if (s.minP > 0) {
    const bound = (top[0] as number) + Math.log(s.minP);
    while (n > 1 && (top[n - 1] as number) < bound) n--;
    if ((top[top.length - 1] as number) < bound) tail = 0;
  }
  const t = s.temperature;
  const kept = top.slice(0, n).map((l) => ({ logprob: l, weight: Math.exp((l - (top[0] as number)) / t) }));
  // each tail token's probability is at most the K-th's: as if all were at it (exact at temperature 1)
  const floor = top[top.length - 1] as number;
  const tailWeight = tail > 0 ? (tail / Math.exp(floor)) * Math.exp((floor - (top[0] as number)) / t) : 0;
  return { kept, tailWeight, above };
}

/** The figures of an audit under a job's sampling. */
export function figuresOf(scores: readonly AuditScore[], sampling: Sampling): Figures {
  const mode = modeOf(sampling);
  const n = scores.length;
  const logprobs = scores.map(claimedLogprob);
  const f: Figures = {
    positions: n,
    worstGap: null,
    minPExcess: null,
    topKExcess: null,
    topPExcess: null,
    minLogprob: n ? Math.min(...logprobs) : 0,
    z: null,
    zPositions: 0,
    zTop: null,
    zTail: null,
    offTopShare: n ? scores.filter((s) => s.rank !== 1).length / n : 0,
    unrankedShare: n ? scores.filter((s) => s.rank === null).length / n : 0,
    meanLogprob: n ? logprobs.reduce((a, b) => a + b, 0) / n : 0,
  };
  if (!n) return f;
  if (mode === "greedy") f.worstGap = Math.max(...scores.map((s) => (s.rank === 1 ? 0 : s.topLogprob - claimedLogprob(s))));
  if (mode !== "sampled") return f;
  const perToken = scores.map((s) => bounds(s, sampling));
  if (sampling.minP > 0) f.minPExcess = Math.max(...perToken.map((b) => b.minP));
  if (sampling.topK > 0) f.topKExcess = Math.max(...perToken.map((b) => b.topK));
  const withTop = perToken.map((b) => b.topP).filter((x): x is number => x !== null);
  if (sampling.topP < 1 && withTop.length) f.topPExcess = Math.max(...withTop);
  const stats = likelihood(scores, sampling);
  if (stats) Object.assign(f, stats);
  return f;
}

/**
 * How far one claimed token lies outside the job's truncation: below its min_p bound (nats),
 * below its top_k-th token (nats; without the top K, any rank past top_k counts as outside), past
 * its top_p nucleus (probability; null without the top K). Negative: inside by that much.
 */
function bounds(s: AuditScore, sampling: Sampling): { minP: number; topK: number; topP: number | null } {
  const minP = s.topLogprob + Math.log(sampling.minP) - claimedLogprob(s);
  const k = s.topLogprobs?.length ?? 0;
  let topK = Number.NEGATIVE_INFINITY;
  if (sampling.topK > 0 && k >= sampling.topK) topK = (s.topLogprobs?.[sampling.topK - 1] as number) - claimedLogprob(s);
  // without the auditor's top K, a rank past top_k is all there is; an unranked token may lie within it
  else if (sampling.topK > 0 && s.rank !== null) topK = s.rank > sampling.topK ? Number.POSITIVE_INFINITY : s.rank - sampling.topK;
  let topP: number | null = null;
  if (s.topLogprobs?.length) topP = (distribution(s.topLogprobs, sampling).above[(s.rank ?? k + 1) - 1] ?? 0) - sampling.topP;
  return { minP, topK, topP };
}

/**
 * The claimed tokens set against the job's own sampling distribution at each position, each
 * figure (observed - expected) / standard deviation summed over the positions: their
 * log-probabilities (an unranked token's taken as the K-th's, and so the kept tokens outside the
 * top K in the expectation), whether each is the auditor's top, and whether each is outside the
 * top K where the truncation keeps tokens there. Needs the auditor's top K. Positions where the
 * truncation keeps tokens outside the top K at a temperature above 1 are left out: the weight of
 * those tokens is then not bounded by what the top K shows.
 */
function likelihood(scores: readonly AuditScore[], sampling: Sampling): Pick<Figures, "z" | "zPositions" | "zTop" | "zTail"> | undefined {
  const sum = { dev: 0, v: 0, devTop: 0, vTop: 0, devTail: 0, vTail: 0, used: 0 };
  for (const s of scores) {
    if (!s.topLogprobs?.length) return undefined;
    const d = distribution(s.topLogprobs, sampling);
    if (d.tailWeight > 0 && sampling.temperature > 1) continue;
    const floor = s.topLogprobs[s.topLogprobs.length - 1] as number;
    const total = d.kept.reduce((a, t) => a + t.weight, 0) + d.tailWeight;
    const qTail = d.tailWeight / total;
    let mean = qTail * floor;
    for (const t of d.kept) mean += (t.weight / total) * t.logprob;
    let v = qTail * (floor - mean) ** 2;
    for (const t of d.kept) v += (t.weight / total) * (t.logprob - mean) ** 2;
    // a position whose token was all but certain says nothing
    if (v < 1e-6) continue;
    const pTop = (d.kept[0]?.weight ?? 0) / total;
    sum.used++;
    sum.dev += claimedLogprob(s) - mean;
    sum.v += v;
    sum.devTop += (s.rank === 1 ? 1 : 0) - pTop;
    sum.vTop += pTop * (1 - pTop);
    if (qTail > 0) {
      sum.devTail += (s.rank === null ? 1 : 0) - qTail;
      sum.vTail += qTail * (1 - qTail);
    }
  }
  const z = (dev: number, v: number) => (v > 0 ? dev / Math.sqrt(v) : null);
  return { z: z(sum.dev, sum.v), zPositions: sum.used, zTop: z(sum.devTop, sum.vTop), zTail: z(sum.devTail, sum.vTail) };
}

const nats = (x: number) => `${x.toFixed(3)} nats`;

/**
 * Judges an audit: the scores the auditor returned (one per audited position), the job's
 * sampling (samplingOf its engine request) and the thresholds of its model file and backend.
 */
export function judge(scores: readonly AuditScore[], sampling: Sampling, t: Thresholds): Verdict {
  const mode = modeOf(sampling);
  const figures = figuresOf(scores, sampling);
  const fail = (failed: Check, reason: string, worst: AuditScore): Verdict => ({ pass: false, mode, failed, reason, worst, figures });
  const checked: Check[] = [];
  const lowest = <T>(xs: readonly T[], key: (x: T) => number): T => xs.reduce((a, b) => (key(b) < key(a) ? b : a));
  if (!scores.length || mode === "biased") return { pass: true, mode, checked, figures };

  if (mode === "greedy") {
    checked.push("greedy");
    const worst = lowest(scores, (s) => (s.rank === 1 ? 0 : claimedLogprob(s) - s.topLogprob));
    const gap = figures.worstGap ?? 0;
    if (gap >= t.tieMargin) {
      return fail(
        "greedy",
        `at position ${worst.position} the claimed token is not the model's greedy choice: its top token is ${nats(gap)} ahead ` +
          `(${worst.rank === null ? "the claimed token is not even among its top K" : `the claimed token ranks ${worst.rank}`}; ` +
          `near-ties under ${nats(t.tieMargin)} are allowed)`,
        worst,
      );
    }
    return { pass: true, mode, checked, figures };
  }

  if (mode === "sampled") {
    const per = scores.map((s) => ({ s, b: bounds(s, sampling) }));
    if (sampling.topK > 0) {
      checked.push("top_k");
      const w = lowest(per, (x) => -x.b.topK);
      if (w.b.topK > t.topKSlack) {
        return fail(
          "top_k",
          `at position ${w.s.position} the claimed token ${w.s.rank === null ? "is not among the model's top K" : `ranks ${w.s.rank}`}, ` +
            `outside the job's top_k ${sampling.topK}${Number.isFinite(w.b.topK) ? ` by ${nats(w.b.topK)}` : ""}`,
          w.s,
        );
      }
    }
    if (sampling.minP > 0) {
      checked.push("min_p");
      const w = lowest(per, (x) => -x.b.minP);
      if (w.b.minP > t.minPSlack) {
        return fail(
          "min_p",
          `at position ${w.s.position} the claimed token is ${nats(w.b.minP)} less likely than the job's min_p ${sampling.minP} allows ` +
            `(rounding accounts for ${nats(t.minPSlack)})`,
          w.s,
        );
      }
    }
    const withTopP = per.filter((x) => x.b.topP !== null);
    if (sampling.topP < 1 && withTopP.length) {
      checked.push("top_p");
      const w = lowest(withTopP, (x) => -(x.b.topP as number));
      if ((w.b.topP as number) > t.topPSlack) {
        return fail(
          "top_p",
          `at position ${w.s.position} the claimed token lies outside the job's top_p ${sampling.topP} nucleus ` +
            `(${((w.b.topP as number) + sampling.topP).toFixed(3)} of the probability is on likelier tokens)`,
          w.s,
        );
      }
    }
    checked.push("floor");
    const least = lowest(scores, claimedLogprob);
    if (claimedLogprob(least) < t.floorLogprob) {
      return fail(
        "floor",
        `at position ${least.position} the claimed token's log-probability is ${least.logprob === null ? "at most " : ""}` +
          `${nats(claimedLogprob(least))}, below the floor of honest runs (${nats(t.floorLogprob)})`,
        least,
      );
    }
    if (figures.zPositions >= t.minZPositions) {
      if (figures.z !== null) {
        checked.push("likelihood");
        if (figures.z < t.minZ) {
          return fail(
            "likelihood",
            `the claimed tokens are less likely under the model than the job's own sampling makes them: ` +
              `${figures.z.toFixed(2)} standard deviations over ${figures.zPositions} positions (honest runs: above ${t.minZ})`,
            least,
          );
        }
      }
      if (figures.zTail !== null) {
        checked.push("tail");
        if (figures.zTail > t.maxZTail) {
          return fail(
            "tail",
            `${(figures.unrankedShare * 100).toFixed(1)}% of the claimed tokens are outside the model's top K, ` +
              `${figures.zTail.toFixed(2)} standard deviations more than the job's own sampling puts there (honest runs: under ${t.maxZTail})`,
            scores.find((s) => s.rank === null) ?? least,
          );
        }
      }
    }
    return { pass: true, mode, checked, figures };
  }

  // constrained: only what holds whatever the penalties or grammar did
  checked.push("unranked", "mean");
  const least = lowest(scores, claimedLogprob);
  if (figures.unrankedShare > t.maxUnrankedShare) {
    return fail(
      "unranked",
      `${(figures.unrankedShare * 100).toFixed(1)}% of the claimed tokens are not among the model's top K ` +
        `(honest runs: at most ${(t.maxUnrankedShare * 100).toFixed(1)}%)`,
      scores.find((s) => s.rank === null) ?? least,
    );
  }
  if (figures.meanLogprob < t.minMeanLogprob) {
    return fail(
      "mean",
      `the claimed tokens' mean log-probability is ${nats(figures.meanLogprob)}, below honest runs' ${nats(t.minMeanLogprob)}`,
      least,
    );
  }
  return { pass: true, mode, checked, figures };
}
