/**
 * The owner's say over a contributing machine, as options every role takes (`node start` solo,
 * head or worker, and `site join`): when it serves (`--schedule`, `--paused`), how much of it
 * (`--threads`, `--max-memory`) and owner-first (yield while the owner's own programs need the
 * CPUs or the machine runs on battery). Also how a running daemon hears `sharedllm node
 * pause|resume|leave` (a command file and SIGUSR1).
 */
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { parseSchedule } from "@sharedllm/node";
import { type Command, InvalidArgumentError, Option } from "commander";
import { positiveInt } from "./args.js";

/** The options as commander parses them. */
export interface OwnerArgs {
  threads?: number;
  maxMemory?: number;
  schedule?: string;
  paused?: boolean;
  ownerFirst?: boolean;
  ownerThreshold?: number;
  ownerWindow?: number;
  ownerQuiet?: number;
}

/** What the daemons take (startNodeDaemon, startWorkerDaemon, startSiteDaemon). */
export interface OwnerSettings {
  threads?: number;
  maxMemoryBytes?: number;
  schedule?: string;
  paused?: boolean;
  ownerFirst?: { threshold?: number; windowMs?: number; quietMs?: number };
}

const positiveNumber = (what: string) => (v: string) => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a positive number of ${what}`);
  return n;
};

export function addOwnerOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--threads <n>", "CPU threads for the engine (default: all cores)").argParser(positiveInt))
    .addOption(
      new Option("--max-memory <GiB>", "cap on the memory the engines may use (weights + KV cache)").argParser(positiveNumber("GiB")),
    )
    .option("--schedule <windows>", 'when to serve, local time, e.g. "weekdays 17:00-08:00; weekends 00:00-24:00"')
    .option("--paused", "start without taking jobs until sharedllm node resume")
    .option("--owner-first", "yield to the owner: hand jobs off while others' programs keep the CPUs busy or on battery (default)")
    .option("--no-owner-first", "serve whatever else the machine is doing")
    .addOption(
      new Option(
        "--owner-threshold <fraction>",
        "owner-first: share of the whole machine others' programs must keep busy (default 0.5)",
      ).argParser((v) => {
        const n = Number(v);
        if (!(n > 0 && n <= 1)) throw new InvalidArgumentError("expected a fraction of the machine, more than 0 and at most 1");
        return n;
      }),
    )
    .addOption(new Option("--owner-window <seconds>", "owner-first: for how long (default 1)").argParser(positiveNumber("seconds")))
    .addOption(
      new Option("--owner-quiet <seconds>", "owner-first: quiet time before taking jobs again (default 60)").argParser(
        positiveNumber("seconds"),
      ),
    );
}

/** The daemons' settings from the options; owner-first on unless `--no-owner-first`. */
export function ownerSettings(o: OwnerArgs): OwnerSettings {
  if (o.schedule) parseSchedule(o.schedule);
  return {
    threads: o.threads,
    maxMemoryBytes: o.maxMemory === undefined ? undefined : o.maxMemory * 2 ** 30,
    schedule: o.schedule,
    paused: o.paused,
    ownerFirst:
      o.ownerFirst === false
        ? undefined
        : {
            threshold: o.ownerThreshold,
            windowMs: o.ownerWindow === undefined ? undefined : o.ownerWindow * 1_000,
            quietMs: o.ownerQuiet === undefined ? undefined : o.ownerQuiet * 1_000,
          },
  };
}

export type OwnerCommand = "pause" | "resume" | "leave";

/** Where `sharedllm node pause|resume|leave` leaves its command for the daemon of `home`. */
export const commandFile = (home: string) => join(home, "node-command");

/**
 * Carries out the owner's commands (pause, resume) for a running daemon until it should end:
 * "leave" when the owner said so, "stop" when the process is interrupted.
 */
export function ownerCommands(home: string, signal: AbortSignal, daemon: { pause(): void; resume(): void }): Promise<"stop" | "leave"> {
  return new Promise((resolve) => {
    signal.addEventListener("abort", () => resolve("stop"), { once: true });
    process.on("SIGUSR1", async () => {
      const command = (await readFile(commandFile(home), "utf8").catch(() => "")).trim() as OwnerCommand;
      await rm(commandFile(home), { force: true });
      if (command === "pause") daemon.pause();
      else if (command === "resume") daemon.resume();
      else if (command === "leave") resolve("leave");
    });
  });
}
