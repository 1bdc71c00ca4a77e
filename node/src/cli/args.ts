/** Argument parsers shared by the subcommands. */
import { type Command, InvalidArgumentError, Option } from "commander";

/** A whole number from 0 to 65535 (ports, counts). */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError("expected a whole number from 0 to 65535");
  return n;
}

/** An EVM address. */
export function address(value: string): `0x${string}` {
  if (!/^0x[0-9a-fA-F]{40}$/.test(value)) throw new InvalidArgumentError("expected an address (0x and 40 hex digits)");
  return value as `0x${string}`;
}

/** Settlement options shared by `up` and `coordinator start`. */
export function addSettlementOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--settle-after <seconds>", "settle credits on chain once the oldest unsettled entry is this old")
        .default(300)
        .argParser(positiveInt),
    )
    .addOption(new Option("--batch-size <n>", "settle once this many charges and earnings wait").default(1000).argParser(positiveInt));
}

export interface SettlementArgs {
  settleAfter: number;
  batchSize: number;
}
