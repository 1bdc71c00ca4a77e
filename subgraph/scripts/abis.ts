// Writes the ABIs the subgraph indexes, abis/<Contract>.json, from the compiled contracts
// (@sharedllm/contracts/artifacts, itself generated from contracts/solidity): never copied by hand.
// Runs first in `npm run build`; usage: tsx scripts/abis.ts [outDir], outDir defaulting to abis/.
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { CreditLedger, FederationRegistry } from "@sharedllm/contracts/artifacts";

const outDir = resolve(process.argv[2] ?? join(import.meta.dirname, "..", "abis"));
mkdirSync(outDir, { recursive: true });
for (const [name, artifact] of Object.entries({ CreditLedger, FederationRegistry })) {
  writeFileSync(join(outDir, `${name}.json`), `${JSON.stringify(artifact.abi, null, 2)}\n`);
}
console.log(`wrote the CreditLedger and FederationRegistry ABIs to ${outDir}`);
