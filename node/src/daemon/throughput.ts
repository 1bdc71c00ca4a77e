/** Recent decode speed of a node: completion tokens over generation time of the jobs that ended in the last window. */
export class Throughput {
  private readonly jobs: { at: number; tokens: number; ms: number }[] = [];

  constructor(private readonly windowMs = 60_000) {}

  record(tokens: number, ms: number, now = Date.now()): void {
    if (tokens > 0 && ms > 0) this.jobs.push({ at: now, tokens, ms });
  }

  /** tokens per second over the window; 0 when nothing ran */
  tokensPerSecond(now = Date.now()): number {
    while (this.jobs.length && (this.jobs[0]?.at ?? now) < now - this.windowMs) this.jobs.shift();
    let tokens = 0;
    let ms = 0;
    for (const j of this.jobs) {
      tokens += j.tokens;
      ms += j.ms;
    }
    return ms ? (tokens * 1000) / ms : 0;
  }
}
