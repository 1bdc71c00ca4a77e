/**
 * How often a node may send the control-channel frames that the coordinator writes to its
 * database (availability changes, model lists): each is an insert, so a node sending them in a
 * loop would grow the tables and take the database's time from everyone (docs/security.md,
 * "Hostile input"). Pure: the caller says what time it is.
 */

/** Written frames one node may send per minute: an owner's pauses and a node's model loads are far fewer. */
export const WRITTEN_FRAMES_PER_MINUTE = 60;

export class FrameBudget {
  private since = Number.NEGATIVE_INFINITY;
  private used = 0;

  constructor(private readonly perMinute = WRITTEN_FRAMES_PER_MINUTE) {}

  /** Whether one more frame fits in the current minute (counting it if so). */
  take(now: number): boolean {
    if (now - this.since >= 60_000) {
      this.since = now;
      this.used = 0;
    }
    if (this.used >= this.perMinute) return false;
    this.used += 1;
    return true;
  }
}
