/** Argument parsers shared by the subcommands. */
import { InvalidArgumentError } from "commander";

/** A whole number from 0 to 65535 (ports, counts). */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65_535) throw new InvalidArgumentError("expected a whole number from 0 to 65535");
  return n;
}
