import { describe, expect, it } from "vitest";
import { inSchedule, parseSchedule, ScheduleError } from "./schedule.js";

// 2026-11-23 is a Monday
const at = (day: number, hh: number, mm = 0) => new Date(2026, 10, 23 + day, hh, mm);

describe("contribution schedule", () => {
  it("weekday evenings through the next morning", () => {
    const w = parseSchedule("weekdays 17:00-08:00");
    expect(inSchedule(w, at(0, 16, 59))).toBe(false); // Mon afternoon
    expect(inSchedule(w, at(0, 17, 0))).toBe(true); // Mon evening
    expect(inSchedule(w, at(1, 7, 59))).toBe(true); // Tue early, from Mon's window
    expect(inSchedule(w, at(1, 8, 0))).toBe(false);
    expect(inSchedule(w, at(0, 7, 0))).toBe(false); // Mon early: Sunday had no window
    expect(inSchedule(w, at(5, 3, 0))).toBe(true); // Sat early, from Fri's window
    expect(inSchedule(w, at(5, 20, 0))).toBe(false); // Sat evening
  });

  it("several windows, day lists and ranges", () => {
    const w = parseSchedule("mon-wed 09:00-12:00; sat,sun 00:00-24:00");
    expect(inSchedule(w, at(2, 10))).toBe(true);
    expect(inSchedule(w, at(3, 10))).toBe(false);
    expect(inSchedule(w, at(6, 23, 59))).toBe(true);
    expect(inSchedule(parseSchedule("daily 00:00-24:00"), at(3, 12))).toBe(true);
  });

  it.each(["weekdays", "someday 10:00-11:00", "daily 25:00-26:00", "daily 10:61-11:00", "mon 10-11"])("rejects %j", (spec) => {
    expect(() => parseSchedule(spec)).toThrow(ScheduleError);
  });
});
