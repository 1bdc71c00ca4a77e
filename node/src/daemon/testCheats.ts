/**
 * Test-only switches that make a node cheat, for the tests and benches of audits
 * (docs/verification.md): a real node daemon with one behaviour changed, so that the
 * coordinator's checks are tried against what a dishonest owner could run. Read from
 * SHAREDLLM_TEST_CHEAT; never set in production.
 *
 * - `inflate`: reports its engine's token counts three times over (prompt and completion).
 * - `random`: streams random token ids (and text made of them) of the same length instead of its
 *   engine's output.
 * - `model=<path>`: serves the GGUF at `path` while claiming to serve the model it was told to
 *   (a cheaper quantisation under the default model's name and sha256).
 */
import { randomInt } from "node:crypto";
import type { NodeFrame } from "@sharedllm/protocol";

export type Cheat = { kind: "inflate" } | { kind: "random"; vocabulary: number } | { kind: "model"; path: string };

/** The cheat this process was started with, if any. */
export function testCheat(env: NodeJS.ProcessEnv = process.env): Cheat | undefined {
  const v = env.SHAREDLLM_TEST_CHEAT;
  if (!v) return undefined;
  if (v === "inflate") return { kind: "inflate" };
  if (v === "random") return { kind: "random", vocabulary: 49_152 };
  if (v.startsWith("model=")) return { kind: "model", path: v.slice("model=".length) };
  throw new Error(`SHAREDLLM_TEST_CHEAT=${v} is not a known cheat`);
}

const WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do"];

/** A frame the node sends, changed by the cheat (`inflate`, `random`); other cheats change nothing here. */
export function cheatFrame(cheat: Cheat | undefined, f: NodeFrame): NodeFrame {
  if (cheat?.kind === "inflate" && f.type === "job.end") {
    const { prompt_tokens = 0, completion_tokens = 0 } = f.usage;
    return {
      ...f,
      usage: {
        prompt_tokens: prompt_tokens * 3,
        completion_tokens: completion_tokens * 3,
        total_tokens: 3 * (prompt_tokens + completion_tokens),
      },
    };
  }
  if (cheat?.kind === "random" && f.type === "job.chunk" && typeof f.tokens !== "number" && f.tokens.length) {
    const tokens = f.tokens.map(() => randomInt(cheat.vocabulary));
    const text = tokens.map(() => ` ${WORDS[randomInt(WORDS.length)]}`).join("");
    let data = f.data;
    try {
      const event = JSON.parse(f.data) as { choices?: { delta?: { content?: string }; text?: string }[] };
      const choice = event.choices?.[0];
      if (choice?.delta?.content) choice.delta.content = text;
      if (typeof choice?.text === "string" && choice.text) choice.text = text;
      data = JSON.stringify(event);
    } catch {
      // not JSON: sent as it was
    }
    return { ...f, tokens, data };
  }
  return f;
}
