/**
 * `npm run bench`: benchmarks that print ratios measured side by side in one run.
 * Options: --rounds=N (default 20), --max-tokens=N (default 128), --engine-args="..." (extra llama-server
 * arguments for the node), --json.
 */
import { parseArgs } from "node:util";
import { benchCoordinator } from "./coordinator.ts";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "20" },
    "max-tokens": { type: "string", default: "128" },
    json: { type: "boolean", default: false },
    "engine-args": { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  process.stdout.write('usage: npm run bench -- [--rounds=N] [--max-tokens=N] [--engine-args="--poll 0"] [--json]\n');
  process.exit(0);
}

const result = await benchCoordinator({
  rounds: Number(values.rounds),
  maxTokens: Number(values["max-tokens"]),
  engineArgs: values["engine-args"],
});
if (values.json) {
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} else {
  const f = (n: number, d = 2) => n.toFixed(d);
  const { direct: d, pipe: p, coordinator: c } = result;
  process.stdout.write(
    [
      `coordinator path vs direct llama-server (${result.rounds} interleaved rounds, ${result.maxTokens} tokens, medians)`,
      `                   direct   bare pipe   coordinator   coordinator vs direct`,
      `decode tokens/s    ${f(d.decodeTps, 1).padStart(8)} ${f(p.decodeTps, 1).padStart(11)} ${f(c.decodeTps, 1).padStart(13)}   ${f(result.decodeRatio, 3)}x   (target >= 0.97)`,
      `first token ms     ${f(d.ttftMs).padStart(8)} ${f(p.ttftMs).padStart(11)} ${f(c.ttftMs).padStart(13)}   +${f(result.addedTtftMs)} ms (target <= 5)`,
      `inter-token gap ms ${f(d.medianGapMs).padStart(8)} ${f(p.medianGapMs).padStart(11)} ${f(c.medianGapMs).padStart(13)}   ${f(result.gapRatio, 3)}x   (target within 5%)`,
      `bare pipe vs direct decode: ${f(result.pipeDecodeRatio, 3)}x; coordinator vs bare pipe: ${f(result.coordinatorVsPipeDecode, 3)}x`,
      `same text on both paths: ${result.sameText}`,
      "",
    ].join("\n"),
  );
}
