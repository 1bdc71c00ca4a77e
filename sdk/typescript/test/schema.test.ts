/** src/schema.ts is what the current routes generate: a route changed without `npm run generate -w @sharedllm/sdk` fails here. */
import { readFile } from "node:fs/promises";
import { expect, it } from "vitest";
import { currentSpec, SCHEMA_FILE, schemaSource } from "../scripts/spec.ts";

it("the committed src/schema.ts matches the coordinator's current spec", async () => {
  const generated = await schemaSource(await currentSpec());
  const committed = await readFile(SCHEMA_FILE, "utf8");
  expect(committed === generated, "src/schema.ts is stale: run `npm run generate -w @sharedllm/sdk` and commit it").toBe(true);
});
