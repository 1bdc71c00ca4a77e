/** Writes src/schema.ts from the current coordinator routes (see spec.ts). */
import { writeFile } from "node:fs/promises";
import { currentSpec, SCHEMA_FILE, schemaSource } from "./spec.ts";

await writeFile(SCHEMA_FILE, await schemaSource(await currentSpec()));
process.stdout.write(`wrote ${SCHEMA_FILE}\n`);
