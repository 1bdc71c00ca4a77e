import { mkdirSync, writeFileSync } from "node:fs";

/** Collects gasUsed per contract function from real transaction receipts and prints a table. */
export class GasReport {
  private readonly samples = new Map<string, bigint[]>();

  add(name: string, gasUsed: bigint) {
    const list = this.samples.get(name) ?? [];
    list.push(gasUsed);
    this.samples.set(name, list);
  }

  table(): string {
    const rows = [...this.samples].sort(([a], [b]) => a.localeCompare(b));
    const lines = ["function                         calls        min        max        avg"];
    for (const [name, gas] of rows) {
      const sorted = [...gas].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const [min, max] = [sorted[0] ?? 0n, sorted.at(-1) ?? 0n];
      const avg = gas.reduce((a, b) => a + b, 0n) / BigInt(gas.length);
      lines.push(`${name.padEnd(30)} ${String(gas.length).padStart(6)} ${[min, max, avg].map((g) => String(g).padStart(10)).join(" ")}`);
    }
    return lines.join("\n");
  }

  write(file: string) {
    mkdirSync(new URL(".", `file://${file}`).pathname, { recursive: true });
    writeFileSync(file, `${this.table()}\n`);
  }
}
