/** `sharedllm models pull|list|rm`: the content-addressed model store. */

import { ModelStore, resolvePaths, terminalProgress } from "@sharedllm/node";
import { Command } from "commander";
import { shutdownSignal } from "./shutdown.js";

export function modelsCommand(): Command {
  const cmd = new Command("models").description("manage the local model store (shared by every instance on this machine)");
  cmd
    .command("pull")
    .description("add a model: 'default' (SmolLM2-135M-Instruct), hf:<org>/<repo>/<file>.gguf[@revision], or a local .gguf path")
    .argument("<source>", "where the model comes from")
    .option("--id <id>", "the model id to serve it under (default: from the file name)")
    .option("--sha256 <hex>", "expected checksum; the pull fails if it differs")
    .action(async (source: string, o: { id?: string; sha256?: string }) => {
      const store = new ModelStore(resolvePaths().cache);
      const e = await store.pull(source, {
        id: o.id,
        sha256: o.sha256?.toLowerCase(),
        progress: terminalProgress(),
        signal: shutdownSignal(),
      });
      process.stdout.write(`${e.id}  sha256:${e.sha256}  ${(e.size / 1e6).toFixed(1)} MB\n`);
    });
  cmd
    .command("list")
    .description("list the models in the store")
    .option("--json", "print JSON")
    .action(async (o: { json?: boolean }) => {
      const models = await new ModelStore(resolvePaths().cache).list();
      if (o.json) return void process.stdout.write(`${JSON.stringify(models, null, 2)}\n`);
      if (!models.length) return void process.stdout.write("no models yet; run: sharedllm models pull default\n");
      for (const m of models)
        process.stdout.write(`${m.id}\t${(m.size / 1e6).toFixed(1)} MB\tsha256:${m.sha256.slice(0, 12)}\t${m.source}\n`);
    });
  cmd
    .command("rm")
    .description("remove a model from the store")
    .argument("<id>", "model id")
    .action(async (id: string) => {
      const e = await new ModelStore(resolvePaths().cache).rm(id);
      process.stdout.write(`removed ${e.id}\n`);
    });
  return cmd;
}
