/**
 * The `sharedllm` command. Every subcommand has --help; errors print what to do
 * (errors.ts) and exit non-zero (2 for usage errors, 1 otherwise).
 */
import { Command, CommanderError } from "commander";
import { contractsCommand } from "./contracts.js";
import { coordinatorCommand } from "./coordinator.js";
import { creditsCommand } from "./credits.js";
import { engineCommand } from "./engine.js";
import { renderError } from "./errors.js";
import { federationCommand } from "./federation.js";
import { modelsCommand } from "./models.js";
import { nodeCommand } from "./node.js";
import { siteCommand } from "./site.js";
import { upCommand } from "./up.js";

const program = new Command("sharedllm")
  .description("Community-owned LLM inference: run a coordinator and nodes that serve llama.cpp behind an OpenAI-compatible API")
  .version("0.1.0");

program.addCommand(upCommand());
program.addCommand(engineCommand());
program.addCommand(modelsCommand());
program.addCommand(nodeCommand());
program.addCommand(coordinatorCommand());
program.addCommand(creditsCommand());
program.addCommand(contractsCommand());
program.addCommand(siteCommand());
program.addCommand(federationCommand());

// settings of the root are not inherited by commands added with addCommand()
const configure = (cmd: Command) => {
  cmd.exitOverride().showHelpAfterError("(run with --help for usage)");
  for (const sub of cmd.commands) configure(sub);
};
configure(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // help and version exit 0; usage errors were already printed by commander
    process.exit(err.exitCode === 0 ? 0 : 2);
  }
  process.stderr.write(renderError(err));
  process.exit(1);
}
