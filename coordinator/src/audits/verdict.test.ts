import type { AuditScore } from "@sharedllm/protocol";
import { describe, expect, it } from "vitest";
import { loadThresholds, THRESHOLDS_FILE, thresholdsFor, UNCALIBRATED } from "./thresholds.js";
import { judge, modeOf, samplingOf, type Thresholds } from "./verdict.js";

const T: Thresholds = {
  tieMargin: 0.1,
  minPSlack: 0.05,
  topKSlack: 0.05,
  topPSlack: 0.01,
  floorLogprob: -25,
  minZ: -6,
  maxZTail: 6,
  minZPositions: 16,
  maxUnrankedShare: 0.5,
  minMeanLogprob: -6,
};

/** A score at `position` for a distribution (probabilities of the top tokens, best first; ids 100, 101, ...) and the claimed rank (null: unranked). */
function score(position: number, probs: number[], rank: number | null): AuditScore {
  const logs = probs.map(Math.log);
  return {
    position,
    rank,
    logprob: rank === null ? null : (logs[rank - 1] as number),
    top: 100,
    topLogprob: logs[0] as number,
    floorLogprob: logs[logs.length - 1] as number,
    topLogprobs: logs,
  };
}

const greedy = samplingOf({ temperature: 0 });
const defaults = samplingOf({});
const open = samplingOf({ temperature: 1, top_k: 0, top_p: 1, min_p: 0 });

describe("samplingOf", () => {
  it("takes llama-server's defaults for what a request leaves out", () => {
    expect(defaults).toEqual({ temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, constrainedBy: [], biased: false });
    expect(modeOf(defaults)).toBe("sampled");
    expect(modeOf(greedy)).toBe("greedy");
  });

  it("names what reshapes the distribution, and a logit bias", () => {
    const s = samplingOf({
      temperature: 0,
      repeat_penalty: 1.1,
      presence_penalty: 0.5,
      response_format: { type: "json_object" },
      tools: [{}],
    });
    expect(s.constrainedBy).toEqual(["repeat_penalty", "presence_penalty", "response_format", "tools"]);
    expect(modeOf(s)).toBe("constrained");
    expect(samplingOf({ response_format: { type: "text" }, repeat_penalty: 1, frequency_penalty: 0 }).constrainedBy).toEqual([]);
    expect(modeOf(samplingOf({ logit_bias: { "42": 5 } }))).toBe("biased");
    expect(modeOf(samplingOf({ logit_bias: {} }))).toBe("sampled");
  });
});

describe("judge, greedy jobs", () => {
  const dist = [0.6, 0.3, 0.1];

  it("passes when every claimed token is the auditor's top", () => {
    const v = judge([score(0, dist, 1), score(5, dist, 1)], greedy, T);
    expect(v).toMatchObject({ pass: true, mode: "greedy", checked: ["greedy"] });
  });

  it("passes a near-tie the other way: rounding decides those", () => {
    const v = judge([score(0, [0.5, 0.48, 0.02], 2)], greedy, T);
    expect(v.pass).toBe(true);
    expect(v.figures.worstGap).toBeCloseTo(Math.log(0.5 / 0.48), 6);
  });

  it("fails on a claimed token clearly behind the top, naming the worst position", () => {
    const v = judge([score(0, dist, 1), score(3, [0.5, 0.45, 0.05], 2), score(7, dist, 2)], greedy, T);
    expect(v.pass).toBe(false);
    if (v.pass) return;
    expect(v.failed).toBe("greedy");
    expect(v.worst.position).toBe(7);
    expect(v.figures.worstGap).toBeCloseTo(Math.log(2), 6);
    expect(v.reason).toContain("position 7");
  });

  it("fails on a token outside the top K, taking its log-probability as the K-th's", () => {
    const v = judge([score(0, dist, null)], greedy, T);
    expect(v).toMatchObject({ pass: false, failed: "greedy" });
    expect(v.figures.worstGap).toBeCloseTo(Math.log(6), 6);
  });
});

describe("judge, sampled jobs: each token within the job's own truncation", () => {
  it("fails a token below the job's top_k-th, beyond the rounding slack, and an unranked one when K reaches top_k", () => {
    const topK40 = samplingOf({ temperature: 1, top_k: 40, min_p: 0, top_p: 1 });
    // each token 0.9 times as likely as the one before, but the 41st all but tied with the 40th
    const many = Array.from({ length: 60 }, (_, i) => 0.9 ** i * (i === 40 ? 0.99 / 0.9 : 1));
    const v = judge([score(0, many, 43)], topK40, T);
    expect(v).toMatchObject({ pass: false, failed: "top_k" });
    expect(v.figures.topKExcess).toBeCloseTo(Math.log(0.9 ** 39 / 0.9 ** 42), 6);
    // the 41st: outside by rounding alone
    expect(judge([score(0, many, 41)], topK40, T).pass).toBe(true);
    expect(judge([score(0, many, 40)], topK40, T).figures.topKExcess).toBe(0);
    // K = 60 >= top_k: an unranked token lies below the 60th
    expect(judge([score(0, many, null)], topK40, T)).toMatchObject({ pass: false, failed: "top_k" });
    // K = 20 < top_k: an unranked token may still be within it
    expect(judge([score(0, many.slice(0, 20), null)], topK40, T).figures.topKExcess).toBe(Number.NEGATIVE_INFINITY);
    // without the auditor's top K: the rank alone
    const bare = { ...score(0, many, 41), topLogprobs: undefined };
    expect(judge([bare], topK40, T)).toMatchObject({ pass: false, failed: "top_k" });
  });

  it("fails a token below the job's min_p bound, beyond the rounding slack", () => {
    const dist = [0.5, 0.3, 0.03, 0.02];
    // 0.03 / 0.5 = 0.06 >= min_p 0.05: inside
    expect(judge([score(0, dist, 3)], defaults, T).pass).toBe(true);
    // 0.02 / 0.5 = 0.04 < 0.05: outside by ln(0.05 / 0.04) = 0.223 nats
    const v = judge([score(0, dist, 4)], defaults, T);
    expect(v).toMatchObject({ pass: false, failed: "min_p" });
    expect(v.figures.minPExcess).toBeCloseTo(Math.log(0.05 / 0.04), 6);
    // within the slack
    expect(judge([score(0, [0.5, 0.3, 0.0245], 3)], defaults, T).pass).toBe(true);
  });

  it("fails a token outside the top_p nucleus", () => {
    const nucleus = samplingOf({ temperature: 0.8, top_k: 0, min_p: 0, top_p: 0.9 });
    const dist = [0.6, 0.25, 0.1, 0.05];
    // above rank 3: 0.85 < 0.9, kept; above rank 4: 0.95 >= 0.9, cut
    expect(judge([score(0, dist, 3)], nucleus, T).pass).toBe(true);
    const v = judge([score(0, dist, 4)], nucleus, T);
    expect(v).toMatchObject({ pass: false, failed: "top_p" });
    expect(v.figures.topPExcess).toBeCloseTo(0.05, 6);
  });

  it("fails a token below the floor", () => {
    const tiny = [0.9, 0.1 - 1e-12, 1e-12];
    const v = judge([score(0, tiny, 3)], open, T);
    expect(v).toMatchObject({ pass: false, failed: "floor" });
    expect(v.pass || v.reason).toContain("below the floor");
  });
});

describe("judge, sampled jobs: the claimed tokens against the job's own sampling", () => {
  const dist = [0.5, 0.2, 0.1, 0.1, 0.05, 0.05];
  /** 40 positions whose claimed ranks follow the distribution exactly: what an honest run looks like on average */
  const honestRanks = [...Array(20).fill(1), ...Array(8).fill(2), ...Array(4).fill(3), ...Array(4).fill(4), 5, 5, 6, 6] as number[];

  it("passes claims that follow the job's own distribution", () => {
    const v = judge(
      honestRanks.map((r, i) => score(i, dist, r)),
      open,
      T,
    );
    expect(v).toMatchObject({ pass: true, mode: "sampled" });
    expect(v.figures.z).toBeCloseTo(0, 6);
    expect(v.figures.zPositions).toBe(40);
    expect(v.pass && v.checked).toContain("likelihood");
  });

  it("fails claims drawn from another distribution, though each is plausible", () => {
    // always the fifth choice: within any bound an untruncated job has, and far less likely overall
    const v = judge(
      honestRanks.map((_, i) => score(i, dist, 5)),
      open,
      T,
    );
    expect(v).toMatchObject({ pass: false, failed: "likelihood" });
    expect(v.figures.z).toBeLessThan(-6);
  });

  it("weighs the claims at the job's temperature: a cold job's honest tokens are mostly the top", () => {
    const cold = samplingOf({ temperature: 0.3, top_k: 0, top_p: 1, min_p: 0 });
    // at 0.3 the top's share is 0.5^3.33 / sum(p^3.33): about 0.93; rank-2 claims at every third position are too many
    const v = judge(
      honestRanks.map((_, i) => score(i, dist, i % 3 === 0 ? 2 : 1)),
      cold,
      T,
    );
    expect(v).toMatchObject({ pass: false, failed: "likelihood" });
    expect(
      judge(
        honestRanks.map((r, i) => score(i, dist, r)),
        samplingOf({ temperature: 1, top_k: 0, top_p: 1, min_p: 0 }),
        T,
      ).pass,
    ).toBe(true);
  });

  it("needs enough uncertain positions before the summed check speaks", () => {
    const v = judge(
      honestRanks.slice(0, 10).map((_, i) => score(i, dist, 5)),
      open,
      T,
    );
    expect(v.pass).toBe(true);
    expect(v.pass && v.checked).not.toContain("likelihood");
  });

  it("fails too many claims outside the top K where the job keeps tokens there (random tokens)", () => {
    // the listed tokens hold 0.7; the rest is outside the top K, which an untruncated job samples from
    const partial = [0.3, 0.1, 0.1, 0.1, 0.1];
    const v = judge(
      Array.from({ length: 40 }, (_, i) => score(i, partial, null)),
      open,
      T,
    );
    expect(v).toMatchObject({ pass: false, failed: "tail" });
    expect(v.figures.zTail).toBeGreaterThan(6);
    // an honest share outside (0.3) passes
    const honest = Array.from({ length: 40 }, (_, i) => score(i, partial, i % 10 < 3 ? null : 1 + (i % 5)));
    expect(judge(honest, open, T).pass).toBe(true);
  });

  it("leaves the summed checks out above temperature 1 without truncation (the tokens outside the top K are not bounded)", () => {
    const hot = samplingOf({ temperature: 1.5, top_k: 0, top_p: 1, min_p: 0 });
    const v = judge(
      Array.from({ length: 40 }, (_, i) => score(i, [0.3, 0.1, 0.1, 0.1, 0.1], null)),
      hot,
      T,
    );
    expect(v.pass).toBe(true);
    expect(v.figures.z).toBeNull();
  });
});

describe("judge, jobs the engine reshaped", () => {
  it("checks only how many claimed tokens are outside the top K and their mean log-probability", () => {
    const penalised = samplingOf({ temperature: 0.8, repeat_penalty: 1.3 });
    const dist = [0.5, 0.3, 0.2];
    // a penalty may push the choice anywhere in the top K: passes
    expect(
      judge(
        Array.from({ length: 20 }, (_, i) => score(i, dist, 3)),
        penalised,
        T,
      ),
    ).toMatchObject({ pass: true, mode: "constrained", checked: ["unranked", "mean"] });
    const random = judge(
      Array.from({ length: 20 }, (_, i) => score(i, dist, i % 4 === 0 ? 1 : null)),
      penalised,
      T,
    );
    expect(random).toMatchObject({ pass: false, failed: "unranked" });
    const unlikely = judge(
      Array.from({ length: 20 }, (_, i) => score(i, [0.99, 0.01 - 1e-4, 1e-4], 3)),
      penalised,
      T,
    );
    expect(unlikely).toMatchObject({ pass: false, failed: "mean" });
  });

  it("judges nothing under a logit bias, which can force any token", () => {
    const v = judge([score(0, [0.9, 0.1], null)], samplingOf({ logit_bias: { "7": 100 } }), T);
    expect(v).toMatchObject({ pass: true, mode: "biased", checked: [] });
  });
});

describe("thresholds", () => {
  it("loads the calibrated file and falls back to wider margins for what it lacks", () => {
    const file = loadThresholds(THRESHOLDS_FILE);
    const [sha256, backends] = Object.entries(file.models)[0] as [string, Record<string, unknown>];
    const backend = Object.keys(backends)[0] as string;
    const got = thresholdsFor(file, sha256, backend);
    expect(got.calibrated).toBe(true);
    expect(got.thresholds.tieMargin).toBeLessThanOrEqual(UNCALIBRATED.tieMargin);
    expect(thresholdsFor(file, sha256, "no-such-backend")).toEqual({ thresholds: UNCALIBRATED, calibrated: false });
    expect(thresholdsFor(file, "0".repeat(64), backend).calibrated).toBe(false);
  });
});
