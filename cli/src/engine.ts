/** `sharedllm engine build|info`: the llama.cpp build in the shared cache. */

import { bundledSource, detectVariant, ensureEngine, findEngine, resolvePaths, terminalProgress } from "@sharedllm/node";
import { Command } from "commander";
import { shutdownSignal } from "./shutdown.js";

export function engineCommand(): Command {
  const cmd = new Command("engine").description("build and inspect the llama.cpp engine (llama-server, ggml-rpc-server)");
  cmd
    .command("build")
    .description("build the engine from the llama.cpp source bundled in node-llama-cpp (once; later runs reuse it)")
    .option("--jobs <n>", "parallel compile jobs (default: all cores)", (v) => Number(v))
    .action(async (o: { jobs?: number }) => {
      const engine = await ensureEngine({
        cache: resolvePaths().cache,
        progress: terminalProgress(),
        signal: shutdownSignal(),
        jobs: o.jobs,
      });
      process.stdout.write(`engine ready: ${engine.dir}\n`);
    });
  cmd
    .command("info")
    .description("show the pinned llama.cpp release and whether it is built")
    .option("--json", "print JSON")
    .action(async (o: { json?: boolean }) => {
      const { tag } = await bundledSource();
      const variant = detectVariant();
      const engine = await findEngine(resolvePaths().cache, variant);
      if (o.json) {
        process.stdout.write(`${JSON.stringify({ tag, variant, built: Boolean(engine), ...engine }, null, 2)}\n`);
        return;
      }
      process.stdout.write(
        `llama.cpp ${tag} (${variant}): ${engine ? `built at ${engine.dir}` : "not built; run: sharedllm engine build"}\n`,
      );
    });
  return cmd;
}
