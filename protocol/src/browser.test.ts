/**
 * The main entry is what the portal bundles: it must not reach a node: module, directly or
 * through a dependency (the `/node` entry holds those parts). Bundled here as Vite would for a
 * browser, every Node.js built-in it resolves is collected.
 */
import { builtinModules } from "node:module";
import { join, relative } from "node:path";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";

const builtin = new RegExp(`^(node:.*|(${builtinModules.join("|")})(/.*)?)$`);

async function nodeModulesReached(entry: string): Promise<string[]> {
  const reached: string[] = [];
  await build({
    entryPoints: [join(import.meta.dirname, entry)],
    bundle: true,
    write: false,
    platform: "browser",
    format: "esm",
    logLevel: "silent",
    plugins: [
      {
        name: "collect-node-builtins",
        setup(b) {
          b.onResolve({ filter: builtin }, (args) => {
            reached.push(`${args.path} (imported by ${relative(import.meta.dirname, args.importer)})`);
            return { path: args.path, external: true };
          });
        },
      },
    ],
  });
  return reached;
}

describe("protocol entries", () => {
  it("the main entry bundles for a browser without any node: module", async () => {
    expect(await nodeModulesReached("index.ts")).toEqual([]);
  });

  it("the check sees node: modules where they are (the /node entry)", async () => {
    expect(await nodeModulesReached("node.ts")).toContain("node:crypto (imported by beacon.ts)");
  });
});
