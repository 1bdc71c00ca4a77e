/**
 * Extracts the response schemas the coordinator must satisfy from OpenAI's official OpenAPI
 * document (github.com/openai/openai-openapi, `openapi.json`) into `schemas.json`, with every
 * schema they reference and without descriptions and examples.
 *
 *   npx tsx test/openai/extractSchemas.ts <openapi.json> <commit> && npx biome format --write test/openai/schemas.json
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const ROOTS = [
  "CreateChatCompletionResponse",
  "CreateChatCompletionStreamResponse",
  "CreateCompletionResponse",
  "ListModelsResponse",
  "Model",
];

const [file, commit] = process.argv.slice(2);
if (!file || !commit) throw new Error("usage: extractSchemas.ts <openapi.json> <commit>");
const spec = JSON.parse(readFileSync(file, "utf8")) as { info: { version: string }; components: { schemas: Record<string, unknown> } };
const all = spec.components.schemas;
const DROP = new Set(["description", "example", "examples", "x-oaiMeta", "title"]);
const kept: Record<string, unknown> = {};
/** The schema without prose; a `properties` object keeps every name, whatever it is. */
function strip(v: unknown, inProperties = false): unknown {
  if (Array.isArray(v)) return v.map((x) => strip(x));
  if (typeof v !== "object" || v === null) return v;
  return Object.fromEntries(
    Object.entries(v)
      .filter(([k]) => inProperties || !DROP.has(k))
      .map(([k, x]) => [k, strip(x, !inProperties && k === "properties")]),
  );
}
const queue = [...ROOTS];
while (queue.length) {
  const name = queue.shift() as string;
  if (name in kept) continue;
  kept[name] = strip(all[name]);
  const text = JSON.stringify(kept[name]);
  for (const m of text.matchAll(/"#\/components\/schemas\/([^"]+)"/g)) queue.push(m[1] as string);
}
const out = {
  $comment: `from github.com/openai/openai-openapi openapi.json (API version ${spec.info.version}) at commit ${commit}, MIT licence; made by test/openai/extractSchemas.ts`,
  components: { schemas: kept },
};
writeFileSync(join(import.meta.dirname, "schemas.json"), `${JSON.stringify(out, null, 1)}\n`);
