/**
 * The subgraph against the contracts: every event of each ABI has exactly one handler, declared
 * with the ABI's signature, and `graph codegen` and `graph build` succeed offline. Both run on a
 * copy of the subgraph in a temporary directory, with its ABIs written afresh from
 * @sharedllm/contracts by scripts/abis.ts, so the working tree's generated/ and build/ are left alone.
 */
import { execFile } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { DEV_DEPLOYER_KEY } from "@sharedllm/contracts";
import { CreditLedger, FederationRegistry } from "@sharedllm/contracts/artifacts";
import { getAddress, getContractAddress } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";

const run = promisify(execFile);
const SUBGRAPH = join(import.meta.dirname, "..");
const ROOT = join(SUBGRAPH, "..");
const GRAPH = join(dirname(createRequire(import.meta.url).resolve("@graphprotocol/graph-cli/package.json")), "bin", "run.js");
const ARTIFACTS: Record<string, { abi: readonly unknown[] }> = { CreditLedger, FederationRegistry };

interface AbiParam {
  type: string;
  indexed?: boolean;
  components?: AbiParam[];
}
interface AbiEntry {
  type: string;
  name?: string;
  inputs?: AbiParam[];
}
interface DataSource {
  name: string;
  network: string;
  source: { address: string; abi: string; startBlock: number };
  mapping: { abis: { name: string; file: string }[]; eventHandlers: { event: string; handler: string }[]; file: string };
}

/** A parameter as graph-node's manifests write it: `indexed address`, tuples as `(uint256,bytes32)`. */
function paramType(p: AbiParam): string {
  const type = p.type.startsWith("tuple") ? `(${(p.components ?? []).map(paramType).join(",")})${p.type.slice("tuple".length)}` : p.type;
  return p.indexed ? `indexed ${type}` : type;
}

function eventSignature(e: AbiEntry): string {
  return `${e.name}(${(e.inputs ?? []).map(paramType).join(",")})`;
}

/** Runs graph-cli in the copy; on failure the error carries its output, which says what broke. */
async function graph(...args: string[]): Promise<void> {
  try {
    await run(process.execPath, [GRAPH, ...args], { cwd: dir, env, maxBuffer: 16 * 1024 * 1024 });
  } catch (e) {
    const { stdout = "", stderr = "" } = e as { stdout?: string; stderr?: string };
    // stdout has the compiler's errors, stderr the progress and stack traces
    throw new Error(`graph ${args.join(" ")} failed:\n${`${stderr}\n${stdout}`.slice(-4000)}`);
  }
}

let dir: string;
let manifest: { dataSources: DataSource[] };
const env = { ...process.env, GRAPH_SKIP_NEW_VERSION_CHECK: "true" };

beforeAll(async () => {
  // a copy of the subgraph's sources; node_modules (a link to the repository's) is where graph-cli
  // finds @graphprotocol/graph-ts, looking up from the manifest
  dir = mkdtempSync(join(tmpdir(), "sharedllm-subgraph-"));
  for (const entry of ["subgraph.yaml", "schema.graphql", "networks.json", "src"]) {
    cpSync(join(SUBGRAPH, entry), join(dir, entry), { recursive: true });
  }
  symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
  await run(process.execPath, ["--import", "tsx", join(SUBGRAPH, "scripts", "abis.ts"), join(dir, "abis")], { cwd: SUBGRAPH, env });
  manifest = parse(readFileSync(join(dir, "subgraph.yaml"), "utf8"));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("subgraph manifest", () => {
  it("indexes both contracts, with the ABIs scripts/abis.ts writes from the compiled contracts", () => {
    expect(manifest.dataSources.map((d) => d.name).sort()).toEqual(["CreditLedger", "FederationRegistry"]);
    for (const ds of manifest.dataSources) {
      expect(ds.source.abi).toBe(ds.name);
      expect(ds.mapping.abis.map((a) => a.name)).toContain(ds.name);
      const file = ds.mapping.abis.find((a) => a.name === ds.name)?.file ?? "";
      expect(JSON.parse(readFileSync(join(dir, file), "utf8"))).toEqual(ARTIFACTS[ds.name]?.abi);
    }
  });

  it("has exactly one handler per ABI event, each declared with the event's types and indexed flags", () => {
    for (const ds of manifest.dataSources) {
      const file = ds.mapping.abis.find((a) => a.name === ds.source.abi)?.file ?? "";
      const abi = JSON.parse(readFileSync(join(dir, file), "utf8")) as AbiEntry[];
      const events = abi.filter((e) => e.type === "event").map(eventSignature);
      const handled = ds.mapping.eventHandlers.map((h) => h.event);
      expect(new Set(handled).size, `${ds.name}: an event with two handlers`).toBe(handled.length);
      expect([...handled].sort(), `${ds.name}: handlers against ABI events`).toEqual([...events].sort());
      // a handler's name is its event's: handleX for X(...)
      for (const h of ds.mapping.eventHandlers) expect(h.handler).toBe(`handle${h.event.slice(0, h.event.indexOf("("))}`);
    }
  });

  it("points at the dev chain's deterministic deployment in subgraph.yaml and networks.json", () => {
    // deployContracts on a fresh dev chain, from its first account: the timelock (nonce 0), the mock
    // stablecoin (1), CreditLedger (2), FederationRegistry (3)
    const from = privateKeyToAccount(DEV_DEPLOYER_KEY).address;
    const expected: Record<string, string> = {
      CreditLedger: getContractAddress({ from, nonce: 2n }),
      FederationRegistry: getContractAddress({ from, nonce: 3n }),
    };
    const networks = JSON.parse(readFileSync(join(dir, "networks.json"), "utf8")) as Record<string, Record<string, { address: string }>>;
    for (const ds of manifest.dataSources) {
      expect(ds.network).toBe("hardhat");
      expect(getAddress(ds.source.address)).toBe(expected[ds.name]);
      expect(getAddress(networks.hardhat?.[ds.name]?.address ?? "")).toBe(expected[ds.name]);
    }
    for (const network of Object.values(networks)) expect(Object.keys(network).sort()).toEqual(["CreditLedger", "FederationRegistry"]);
  });
});

describe("graph-cli", () => {
  it("generates the types and compiles the mappings offline (graph codegen && graph build)", { timeout: 120_000 }, async () => {
    await graph("codegen");
    await graph("build", "--output-dir", join(dir, "build"));
    const built = parse(readFileSync(join(dir, "build", "subgraph.yaml"), "utf8")) as { dataSources: DataSource[] };
    expect(built.dataSources.map((d) => d.mapping.file).sort()).toEqual([
      "CreditLedger/CreditLedger.wasm",
      "FederationRegistry/FederationRegistry.wasm",
    ]);
  });
});
