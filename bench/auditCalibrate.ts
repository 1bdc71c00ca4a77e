/**
 * `npx tsx bench/auditCalibrate.ts`: the audit verdict's thresholds for the default model, from
 * honest runs on real llama-servers of the engine build, written to
 * coordinator/audit-thresholds.json (keyed by the model's sha256 and the backend), with how they
 * were measured; then the cheats' figures against them. See bench/METHODOLOGY.md.
 *
 * Honest jobs run through the node's own job runner (so the claimed token ids are what a
 * coordinator receives) on a 1-slot llama-server, one at a time, and on a 2-slot one, two at a
 * time (concurrent load: their tokens share batches); greedy, sampled at a few temperatures with
 * llama-server's default truncation, sampled untruncated, and with a repeat penalty or a JSON
 * response format. Each job's output is scored at a random half of its positions on a 1-slot
 * auditor through the auditor's runner, in one pass on its one-pass scorer (onePassClaim), and a
 * share of them (--replay-share) replayed one token at a time as well (replayClaim, the runner's
 * way without a scorer): the one pass must give the replay's distributions, and both the serving
 * engine's own (each honest job asks for its tokens' log-probabilities). Cheats:
 * random token ids of an honest job's length, another prompt's honest output, and the outputs of
 * the default model requantised to Q2_K (fluent) and Q2_0 (gibberish), each claiming to be the
 * default.
 *
 * Options: --prompts=N (8), --cheat-prompts=N (the prompts the cheats run; default all),
 * --max-tokens=N (64), --threads=N (2), --replay-share=X (1), --minutes=N (start no prompt after
 * N minutes: a run cut to the time there is; prompts run in turn, each through every source),
 * --data=FILE (keep the runs there; with --reuse, analyse the runs in FILE again without running
 * anything), --out=FILE.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Figures, figuresOf, judge, samplingOf, type Thresholds } from "@sharedllm/coordinator";
import {
  type ClaimScore,
  DEFAULT_MODEL,
  EngineConnections,
  ensureEngine,
  type LlamaServer,
  ModelStore,
  onePassClaim,
  replayClaim,
  resolvePaths,
  Scorer,
  startLlamaServer,
} from "@sharedllm/node";
import { runClaim } from "@sharedllm/testkit/claims";
import { requantizedDefault } from "@sharedllm/testkit/requantized";

const { values } = parseArgs({
  options: {
    prompts: { type: "string", default: "8" },
    "cheat-prompts": { type: "string" },
    "replay-share": { type: "string", default: "1" },
    minutes: { type: "string", default: "1e9" },
    "max-tokens": { type: "string", default: "64" },
    threads: { type: "string", default: "2" },
    data: { type: "string", default: join(tmpdir(), "sharedllm-audit-calibration.json") },
    reuse: { type: "boolean", default: false },
    out: { type: "string", default: join(import.meta.dirname, "..", "coordinator", "audit-thresholds.json") },
  },
});

const CHATS = [
  "Write a short story about a lighthouse keeper and a storm.",
  "Explain how photosynthesis works.",
  "What is the capital of France, and why is it famous?",
  "Give me five tips for learning a new language.",
  "Write a Python function that checks whether a number is prime.",
  "Describe the water cycle to a ten-year-old.",
  "What are the pros and cons of remote work?",
  "Summarise the plot of Romeo and Juliet.",
  "How do vaccines train the immune system?",
  "Write a haiku about autumn leaves.",
  "Explain how a bicycle stays upright.",
  "What should I pack for a week of hiking?",
  "Write a limerick about a cat who loves cheese.",
  "Compare trains and planes for a 500 km trip.",
  "How does a refrigerator keep food cold?",
  "Give me a recipe for a simple tomato soup.",
  "Why do leaves change colour in autumn?",
  "Write a short dialogue between a robot and a child.",
];
const COMPLETIONS = ["The history of the printing press begins", "Once upon a time, in a small village by the sea,"];

interface Prompt {
  kind: "chat" | "completion";
  fields: Record<string, unknown>;
}

/** The sampling settings of the honest jobs (request fields on top of the prompt). */
const SETTINGS: Record<string, Record<string, unknown>> = {
  greedy: { temperature: 0 },
  "t0.5": { temperature: 0.5 },
  "t0.8": {},
  "t1.0": { temperature: 1 },
  "t1.0-open": { temperature: 1, top_k: 0, top_p: 1, min_p: 0 },
  /** four times as long: the summed checks grow with the positions audited */
  "t1.0-open-long": { temperature: 1, top_k: 0, top_p: 1, min_p: 0 },
  "t0.8-nucleus": { temperature: 0.8, top_k: 0, top_p: 0.9, min_p: 0 },
  "repeat-penalty": { temperature: 0.8, repeat_penalty: 1.3 },
  json: { temperature: 0.8, response_format: { type: "json_object" } },
};
/** The settings a cheating model serves (the cheat's own sampling, claimed as the job's). */
const CHEAT_SETTINGS = ["greedy", "t0.5", "t0.8", "t1.0", "t1.0-open", "t1.0-open-long"];
const LONG = 4;
const lengthOf = (setting: string, maxTokens: number) => (setting.endsWith("-long") ? LONG * maxTokens : maxTokens);

type Source = "honest-1slot" | "honest-2slot" | "q2_k" | "q2_0" | "random" | "replay";

interface Run {
  source: Source;
  setting: string;
  prompt: number;
  kind: "chat" | "completion";
  request: Record<string, unknown>;
  claimed: number[];
  /** the serving engine's own log-probability of each claimed token (honest runs) */
  own?: number[];
  promptTokens: number;
  /** the runner's scores (one pass), and its time */
  scores: ClaimScore[];
  auditMs: number;
  /** a token-by-token replay's scores at the same positions, and its time (a share of the runs) */
  replay?: ClaimScore[];
  replayMs?: number;
}

interface Data {
  date: string;
  engine: string;
  model: { id: string; sha256: string };
  cheats: Record<string, string>;
  maxTokens: number;
  threads: number;
  vocab: number;
  /** the one-pass scorer's context */
  scorerContext: number;
  /** jobs left out: their streams gave tokens without their ids */
  skipped: number;
  runs: Run[];
}

const log = (line: string) => process.stderr.write(`${line}\n`);

/** A seeded generator (mulberry32): the same positions and random tokens on every run. */
function rng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function collect(
  minutes: number,
  promptCount: number,
  cheatPrompts: number,
  maxTokens: number,
  threads: number,
  replayShare: number,
): Promise<Data> {
  const { cache } = resolvePaths();
  const engine = await ensureEngine({ cache });
  const store = new ModelStore(cache);
  const model = (await store.get(DEFAULT_MODEL.id)) ?? (await store.pull("default"));
  const q2k = await requantizedDefault("Q2_K");
  const q20 = await requantizedDefault("Q2_0");
  const logDir = await mkdtemp(join(tmpdir(), "sharedllm-calibrate-"));
  const servers: LlamaServer[] = [];
  const serve = async (path: string, slots: number) => {
    const s = await startLlamaServer({ engine, modelId: DEFAULT_MODEL.id, modelPath: path, slots, contextPerSlot: 2048, threads, logDir });
    servers.push(s);
    return { server: s, connections: new EngineConnections(s.port, `Bearer ${s.apiKey}`) };
  };
  const prompts: Prompt[] = [
    ...CHATS.slice(0, Math.max(1, promptCount - 2)).map((c) => ({
      kind: "chat" as const,
      fields: { messages: [{ role: "user", content: c }] },
    })),
    ...COMPLETIONS.slice(0, Math.max(0, Math.min(2, promptCount - 1))).map((p) => ({ kind: "completion" as const, fields: { prompt: p } })),
  ];
  const runs: Run[] = [];
  let skipped = 0;
  // the cheats run the first --cheat-prompts prompts, completions first
  const cheatsRun = (i: number) => (prompts[i]?.kind === "completion" ? i - (prompts.length - 2) : i + 2) < cheatPrompts;
  let scorer: Scorer | undefined;
  try {
    const auditor = await serve(store.blobPath(model.sha256), 1);
    scorer = await Scorer.start({ engine, modelPath: store.blobPath(model.sha256), contextSize: 2048, threads });
    const onePass = scorer;
    const vocab = await vocabSize(auditor.server);
    const random = rng(7);
    const replays = rng(11);
    const audit = async (run: Omit<Run, "promptTokens" | "scores" | "auditMs" | "replay" | "replayMs">) => {
      if (!run.claimed.length) return;
      let positions = run.claimed.map((_, i) => i).filter(() => random() < 0.5);
      if (!positions.length) positions = [0];
      const claim = { kind: run.kind, request: run.request, claimed: run.claimed, positions, topK: 100 };
      const signal = new AbortController().signal;
      const t0 = performance.now();
      const one = await onePassClaim(claim, auditor.connections, onePass, signal);
      const auditMs = performance.now() - t0;
      if (!one) throw new Error("audit cancelled");
      let replayed: { replay: ClaimScore[]; replayMs: number } | undefined;
      if (replays() < replayShare) {
        const t1 = performance.now();
        const r = await replayClaim(claim, auditor.connections, signal);
        if (!r) throw new Error("audit cancelled");
        replayed = { replay: r.scores, replayMs: performance.now() - t1 };
      }
      runs.push({ ...run, promptTokens: one.promptTokens, scores: one.scores, auditMs, ...replayed });
    };
    const request = (p: Prompt, setting: string, seed: number) => ({
      model: DEFAULT_MODEL.id,
      ...p.fields,
      ...SETTINGS[setting],
      seed,
      max_tokens: lengthOf(setting, maxTokens),
      n_predict: lengthOf(setting, maxTokens),
    });
    // a chat with a response format streams some tokens without their ids (its content is parsed as
    // it comes), so the coordinator could not audit it: the grammar-constrained runs are completions
    const settingsFor = (p: Prompt, names: string[]) => names.filter((s) => s !== "json" || p.kind === "completion");

    const sources: [Source, string, number, string[]][] = [
      ["honest-1slot", store.blobPath(model.sha256), 1, Object.keys(SETTINGS)],
      ["honest-2slot", store.blobPath(model.sha256), 2, Object.keys(SETTINGS)],
      ["q2_k", q2k.path, 1, CHEAT_SETTINGS],
      ["q2_0", q20.path, 1, ["greedy", "t0.8"]],
    ];
    const nodes = new Map<Source, Awaited<ReturnType<typeof serve>>>();
    for (const [source, path, slots] of sources) nodes.set(source, await serve(path, slots));
    // the cheats run the completions and the first chats, which go first: a run cut short by
    // --minutes has the cheats, and every honest setting on each prompt it reached
    const order = [...prompts.keys()].sort((a, b) => Number(!cheatsRun(a)) - Number(!cheatsRun(b)) || a - b);
    const greedyOutputs = new Map<number, number[]>();
    const started = performance.now();
    for (const i of order) {
      if (performance.now() - started > minutes * 60_000) {
        log(`--minutes=${minutes} is up: ${runs.length} audits`);
        break;
      }
      const p = prompts[i] as Prompt;
      for (const [source, , slots, settings] of sources) {
        const honest = source.startsWith("honest");
        if (!honest && !cheatsRun(i)) continue;
        const node = nodes.get(source) as Awaited<ReturnType<typeof serve>>;
        const jobs = settingsFor(p, settings);
        for (let j = 0; j < jobs.length; j += slots) {
          // a 2-slot node runs two jobs at once: their tokens share the engine's batches
          const batch = jobs.slice(j, j + slots);
          const seed = 1000 + 100 * i + j;
          const done = await Promise.all(
            batch.map((setting) =>
              // a job whose stream gave some tokens without their ids (a character split over tokens the
              // engine held back) could not be audited by a coordinator either: left out, and counted
              runClaim(node.connections, p.kind, request(p, setting, seed), { logprobs: honest }).catch((err: Error) => {
                log(`${source} ${setting} prompt ${p.kind}: left out: ${err.message}`);
                skipped++;
                return undefined;
              }),
            ),
          );
          for (const [n, setting] of batch.entries()) {
            const out = done[n];
            if (!out) continue;
            if (source === "honest-1slot" && setting === "greedy") greedyOutputs.set(i, out.claimed);
            await audit({
              source,
              setting,
              prompt: i,
              kind: p.kind,
              request: request(p, setting, seed),
              claimed: out.claimed,
              ...(honest && { own: out.own }),
            });
          }
        }
      }
      if (cheatsRun(i)) {
        const length = greedyOutputs.get(i)?.length ?? maxTokens;
        const claimed = Array.from({ length }, () => Math.floor(random() * vocab));
        await audit({ source: "random", setting: "t0.8", prompt: i, kind: p.kind, request: request(p, "t0.8", 1), claimed });
        const long = Array.from({ length: LONG * maxTokens }, () => Math.floor(random() * vocab));
        const openLong = request(p, "t1.0-open-long", 1);
        await audit({ source: "random", setting: "t1.0-open-long", prompt: i, kind: p.kind, request: openLong, claimed: long });
        // another prompt's honest output (the one before it in the order)
        const other = [...greedyOutputs.entries()].filter(([k]) => k !== i).at(-1)?.[1];
        if (other)
          await audit({ source: "replay", setting: "t0.8", prompt: i, kind: p.kind, request: request(p, "t0.8", 1), claimed: other });
      }
      log(`prompt ${i} done: ${runs.length} audits, ${Math.round((performance.now() - started) / 1000)} s`);
    }
    return {
      date: new Date().toISOString(),
      engine: `${engine.tag}-${engine.variant}`,
      model: { id: model.id, sha256: model.sha256 },
      cheats: { q2_k: q2k.sha256, q2_0: q20.sha256 },
      maxTokens,
      threads,
      vocab,
      scorerContext: onePass.contextSize,
      skipped,
      runs,
    };
  } finally {
    await scorer?.stop();
    for (const s of servers) await s.supervisor.stop();
    await rm(logDir, { recursive: true, force: true });
  }
}

async function vocabSize(server: LlamaServer): Promise<number> {
  const res = await fetch(`${server.url}/v1/models`, { headers: { authorization: `Bearer ${server.apiKey}` } });
  const body = (await res.json()) as { data?: { meta?: { n_vocab?: number } }[] };
  const n = body.data?.[0]?.meta?.n_vocab;
  if (!n) throw new Error("the engine did not report its vocabulary size");
  return n;
}

// ---- analysis ----

const max = (xs: number[]) => (xs.length ? Math.max(...xs) : Number.NEGATIVE_INFINITY);
const min = (xs: number[]) => (xs.length ? Math.min(...xs) : Number.POSITIVE_INFINITY);
const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN);
const round = (x: number, d = 4) => (Number.isFinite(x) ? Math.round(x * 10 ** d) / 10 ** d : x);

interface Judged {
  run: Run;
  /** the figures of the runner's scores (one pass) */
  figures: Figures;
  /** for honest runs: the widest difference between the serving engine's and the auditor's log-probability of a claimed token */
  delta?: number;
  /** the replay's figures, where it was replayed */
  replayFigures?: Figures;
  /** for honest runs replayed: the same widest difference, the replay's against the serving engine's */
  deltaReplay?: number;
}

/** The widest differences between the one pass's log-probabilities (claimed and top K) and the replay's, below and past 256 tokens of context. */
function onePassDifference(run: Run): { below256: number; past256: number } {
  const d = { below256: 0, past256: 0 };
  for (const [i, one] of run.scores.entries()) {
    const r = run.replay?.[i];
    if (!r || r.position !== one.position) continue;
    const pairs: [number | null, number | null][] = [
      [one.logprob, r.logprob],
      ...(one.topLogprobs ?? []).map((l, k): [number, number | null] => [l, r.topLogprobs?.[k] ?? null]),
    ];
    for (const [a, b] of pairs) {
      if (a === null || b === null) continue;
      const key = run.promptTokens + one.position >= 256 ? "past256" : "below256";
      d[key] = Math.max(d[key], Math.abs(a - b));
    }
  }
  return d;
}

/** Random and replayed claims are judged as jobs of several settings (their scores do not depend on it). */
const CLAIMED_AS = ["greedy", "t0.8", "t1.0-open"];

function analyse(data: Data) {
  const runs = data.runs.flatMap((run) =>
    ((run.source === "random" || run.source === "replay") && run.setting === "t0.8" ? CLAIMED_AS : [run.setting]).map((setting) =>
      setting === run.setting ? run : { ...run, setting, request: { ...run.request, ...SETTINGS[setting] } },
    ),
  );
  const judged: Judged[] = runs.map((run) => {
    const figures = figuresOf(run.scores, samplingOf(run.request));
    const sampling = samplingOf(run.request);
    const fromServing = (scores: ClaimScore[]) =>
      run.own?.length === run.claimed.length
        ? max(scores.filter((s) => s.logprob !== null).map((s) => Math.abs((s.logprob as number) - (run.own?.[s.position] as number))))
        : undefined;
    return {
      run,
      figures,
      delta: fromServing(run.scores),
      ...(run.replay && { replayFigures: figuresOf(run.replay, sampling), deltaReplay: fromServing(run.replay) }),
    };
  });
  const honest = judged.filter((j) => j.run.source.startsWith("honest"));
  const of = (js: Judged[], mode: string) => js.filter((j) => modeOfRun(j.run) === mode);
  // what the runner reports (one pass) and, where replayed, the replay's: the thresholds hold for both
  const values = (js: Judged[], key: keyof Figures) =>
    js.flatMap((j) => [j.figures[key], j.replayFigures?.[key]]).filter((x): x is number => typeof x === "number" && Number.isFinite(x));
  const hGreedy = of(honest, "greedy");
  const hSampled = of(honest, "sampled");
  const hConstrained = of(honest, "constrained");
  const maxDelta = max(honest.map((j) => j.delta ?? 0));

  // each threshold: the closest honest value, and the margin put between it and the threshold
  const closest = {
    worstGap: max(values(hGreedy, "worstGap")),
    minPExcess: max(values(hSampled, "minPExcess")),
    topKExcess: max(values(hSampled, "topKExcess")),
    topPExcess: max(values(hSampled, "topPExcess")),
    minLogprob: min(values(hSampled, "minLogprob")),
    z: min(values(hSampled, "z")),
    zTail: max(values(hSampled, "zTail")),
    unrankedShare: max(values([...hSampled, ...hConstrained], "unrankedShare")),
    meanLogprob: min(values([...hSampled, ...hConstrained], "meanLogprob")),
  };
  const vocab = data.vocab;
  // floors for what one machine cannot show: other CPUs' kernels (AVX2, AVX-512, NEON) round otherwise
  const UNSEEN = { tieMargin: 0.1, minPSlack: 0.05, topKSlack: 0.05, topPSlack: 0.01 };
  const thresholds: Thresholds = {
    // a near-tie flips when rounding moves the two tokens' log-probabilities by their gap: at most
    // twice the widest engine-to-auditor difference seen; twice the widest honest gap as well
    tieMargin: round(Math.max(2 * Math.max(0, closest.worstGap), 4 * maxDelta, UNSEEN.tieMargin)),
    minPSlack: round(Math.max(2 * Math.max(0, closest.minPExcess) + 2 * maxDelta, UNSEEN.minPSlack)),
    topKSlack: round(Math.max(2 * Math.max(0, closest.topKExcess) + 2 * maxDelta, UNSEEN.topKSlack)),
    topPSlack: round(Math.max(2 * Math.max(0, closest.topPExcess) + 2 * maxDelta, UNSEEN.topPSlack)),
    // below the least likely honest token by 2 nats, and where an honest sample at temperature <= 1
    // lands less often than once in a million positions (each of the V tokens under it has p < e^floor)
    floorLogprob: round(Math.min(closest.minLogprob - 2, Math.log(1e-6 / vocab))),
    minZ: round(Math.min(-6, closest.z - 2), 2),
    maxZTail: round(Math.max(6, closest.zTail + 2), 2),
    minZPositions: 16,
    maxUnrankedShare: round(Math.min(0.5, closest.unrankedShare * 2 + 0.05)),
    minMeanLogprob: round(closest.meanLogprob - 2),
  };

  const groups = new Map<string, Judged[]>();
  for (const j of judged) {
    const key = `${j.run.source} ${j.run.setting}`;
    groups.set(key, [...(groups.get(key) ?? []), j]);
  }
  const table = [...groups.entries()].map(([key, js]) => {
    const verdicts = js.map((j) => judge(j.run.scores, samplingOf(j.run.request), thresholds));
    const failed = verdicts.filter((v) => !v.pass);
    const replayed = js.filter((j) => j.run.replay);
    const failedReplay = replayed.filter((j) => !judge(j.run.replay ?? [], samplingOf(j.run.request), thresholds).pass).length;
    const why = new Map<string, number>();
    for (const v of failed) if (!v.pass) why.set(v.failed, (why.get(v.failed) ?? 0) + 1);
    return {
      group: key,
      jobs: js.length,
      positions: js.reduce((a, j) => a + j.figures.positions, 0),
      /** the verdicts on the runner's scores (one pass) */
      failed: failed.length,
      why: Object.fromEntries(why),
      /** the jobs replayed as well, and the verdicts on the replays' scores */
      replayed: replayed.length,
      failedReplay,
      worstGap: [round(min(values(js, "worstGap"))), round(max(values(js, "worstGap")))],
      z: [round(min(values(js, "z")), 2), round(max(values(js, "z")), 2)],
      zTop: [round(min(values(js, "zTop")), 2), round(max(values(js, "zTop")), 2)],
      zTail: [round(min(values(js, "zTail")), 2), round(max(values(js, "zTail")), 2)],
      /** z per square root of the positions it stands on: z grows with the positions audited */
      zPerRootPosition: round(
        mean(js.filter((j) => j.figures.z !== null).map((j) => (j.figures.z as number) / Math.sqrt(j.figures.zPositions))),
        3,
      ),
      minPExcess: round(max(values(js, "minPExcess"))),
      unrankedShare: round(max(values(js, "unrankedShare")), 3),
      meanLogprob: [round(min(values(js, "meanLogprob")), 2), round(max(values(js, "meanLogprob")), 2)],
      offTopShare: [round(min(values(js, "offTopShare")), 3), round(max(values(js, "offTopShare")), 3)],
      /** the audits' time per claimed token replayed (up to each one's last scored position) */
      auditMsPerToken: round(
        js.reduce((a, j) => a + j.run.auditMs, 0) /
          Math.max(
            1,
            js.reduce((a, j) => a + (j.run.scores.at(-1)?.position ?? 0) + 1, 0),
          ),
        1,
      ),
    };
  });
  const greedyFlips = hGreedy.reduce((a, j) => a + j.run.scores.filter((s) => s.rank !== 1).length, 0);
  const differences = judged.filter((j) => j.run.replay).map((j) => onePassDifference(j.run));
  const sum = (js: Judged[], f: (j: Judged) => number) => js.reduce((a, j) => a + f(j), 0);
  const replayedHonest = honest.filter((j) => j.run.replay);
  const onePass = {
    /** jobs also replayed token by token (honest and cheats) */
    replayedJobs: differences.length,
    /** the widest difference of a log-probability (claimed and top K) between the one pass and the replay */
    widestDifferenceFromReplay: {
      below256: round(max(differences.map((d) => d.below256)), 6),
      past256: round(max(differences.map((d) => d.past256)), 6),
    },
    /** the widest difference of a claimed token's log-probability from the honest serving engine's own: one pass (all honest jobs), replay (those replayed) */
    widestDifferenceFromServing: round(maxDelta, 6),
    widestDifferenceFromServingReplay: round(max(replayedHonest.map((j) => j.deltaReplay ?? 0)), 6),
    /** the auditor's time over the honest jobs replayed as well: one pass, replay */
    replayedHonestMs: {
      onePass: Math.round(sum(replayedHonest, (j) => j.run.auditMs)),
      replay: Math.round(sum(replayedHonest, (j) => j.run.replayMs ?? 0)),
    },
  };
  return { thresholds, closest, maxDelta, table, greedyFlips, honest, onePass };
}

function modeOfRun(run: Run): string {
  const s = samplingOf(run.request);
  if (s.biased) return "biased";
  if (s.constrainedBy.length) return "constrained";
  return s.temperature <= 0 ? "greedy" : "sampled";
}

const data: Data = values.reuse
  ? (JSON.parse(await readFile(values.data as string, "utf8")) as Data)
  : await collect(
      Number(values.minutes),
      Number(values.prompts),
      Number(values["cheat-prompts"] ?? values.prompts),
      Number(values["max-tokens"]),
      Number(values.threads),
      Number(values["replay-share"]),
    );
if (!values.reuse) await writeFile(values.data as string, JSON.stringify(data));
const a = analyse(data);
for (const row of a.table) log(JSON.stringify(row));
log(`closest honest figures: ${JSON.stringify(a.closest)}; widest engine-to-auditor log-probability difference ${a.maxDelta}`);
log(`one pass: ${JSON.stringify(a.onePass)}`);
log(`thresholds: ${JSON.stringify(a.thresholds)}`);

const honestRuns = a.honest.map((j) => j.run);
const entry = {
  thresholds: a.thresholds,
  measured: {
    date: data.date,
    engine: data.engine,
    how: "bench/auditCalibrate.ts",
    honest: {
      jobs: honestRuns.length,
      positions: honestRuns.reduce((n, r) => n + r.scores.length, 0),
      nodes:
        "llama-server with 1 slot (jobs one at a time) and with 2 slots (two at a time); auditor: half the positions scored in one pass " +
        `(the runner's way), ${Math.round(Number(values["replay-share"]) * 100)}% of the jobs replayed token by token as well`,
      settings: SETTINGS,
      maxTokens: data.maxTokens,
      greedyOffTop: a.greedyFlips,
      leftOut: data.skipped,
      widestLogprobDifference: round(a.maxDelta, 6),
    },
    closest: Object.fromEntries(Object.entries(a.closest).map(([k, v]) => [k, round(v)])),
    onePass: a.onePass,
    margins: {
      tieMargin: "max(2 x widest honest greedy gap, 4 x widest engine-to-auditor log-probability difference, 0.1)",
      minPSlack: "max(2 x furthest honest excess (if any) + 2 x widest log-probability difference, 0.05)",
      topKSlack: "max(2 x furthest honest excess (if any) + 2 x widest log-probability difference, 0.05)",
      topPSlack: "max(2 x furthest honest excess (if any) + 2 x widest log-probability difference, 0.01)",
      unseen: "the floors (0.1, 0.05, 0.05, 0.01) stand for other CPUs' kernels, which round otherwise than this machine's",
      floorLogprob: "min(least likely honest token - 2, ln(1e-6 / vocabulary))",
      minZ: "min(-6, lowest honest z - 2)",
      maxZTail: "max(6, highest honest tail z + 2)",
      maxUnrankedShare: "min(0.5, 2 x largest honest share + 0.05)",
      minMeanLogprob: "lowest honest mean - 2",
    },
    groups: a.table.map(({ auditMsPerToken: _, ...row }) => row),
    cheats: data.cheats,
  },
};
let file: { version: 1; models: Record<string, Record<string, unknown>> } = { version: 1, models: {} };
try {
  file = JSON.parse(await readFile(values.out as string, "utf8"));
} catch {
  // a new file
}
const backend = data.engine.split("-").pop() as string;
file.models[data.model.sha256] = { ...(file.models[data.model.sha256] ?? {}), [backend]: entry };
// arrays of numbers on one line, as the repository's formatter has them
const json = JSON.stringify(file, null, 2).replace(/\[\s+([^[\]{}]*?)\s+\]/g, (_, items: string) => `[${items.split(/,\s+/).join(", ")}]`);
await writeFile(values.out as string, `${json}\n`);
log(`wrote ${values.out}`);
