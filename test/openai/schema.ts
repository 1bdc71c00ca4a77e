/**
 * OpenAI's official response schemas (schemas.json, extracted from OpenAI's OpenAPI document by
 * extractSchemas.ts) as validators: a response that fails one is one a strict client may reject.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv2020 } from "ajv/dist/2020.js";

export type OpenAISchema =
  | "CreateChatCompletionResponse"
  | "CreateChatCompletionStreamResponse"
  | "CreateCompletionResponse"
  | "ListModelsResponse"
  | "Model";

/** OpenAPI 3.0's `nullable: true`, which the document still uses in places, as JSON Schema says it. */
function withoutNullable(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNullable);
  if (typeof v !== "object" || v === null) return v;
  const { nullable, ...rest } = v as Record<string, unknown>;
  const schema = Object.fromEntries(Object.entries(rest).map(([k, x]) => [k, withoutNullable(x)]));
  return nullable === true ? { anyOf: [schema, { type: "null" }] } : schema;
}

const document = withoutNullable(JSON.parse(readFileSync(join(import.meta.dirname, "schemas.json"), "utf8"))) as object;
// the document names formats of its own (`unixtime`) and keywords for its generators
// (`x-stainless-const`): formats are not checked and unknown keywords are allowed
const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
ajv.addSchema({ $id: "openai", ...document });

/** The schema's complaints about a value (an empty list when it conforms). */
export function schemaErrors(schema: OpenAISchema, value: unknown): string[] {
  const validate = ajv.getSchema(`openai#/components/schemas/${schema}`);
  if (!validate) throw new Error(`no schema ${schema}`);
  if (validate(value)) return [];
  return (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
}
