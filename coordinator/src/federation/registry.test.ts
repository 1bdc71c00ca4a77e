import type { Address } from "viem";
import { describe, expect, it } from "vitest";
import { touchedBy } from "./registry.js";

const SELF = "0x00000000000000000000000000000000000000aa" as Address;
const OTHER = "0x00000000000000000000000000000000000000bb" as Address;
const at = (n: number) => `0x${n.toString(16).padStart(40, "0")}` as Address;

describe("touchedBy", () => {
  it("ignores a flood of strangers' registrations, updates and renewals, and others' endorsements", () => {
    const spam = Array.from({ length: 10_000 }, (_, i) => ({
      eventName: ["Registered", "Updated", "KeyRenewed"][i % 3] as string,
      args: { coordinator: at(0x1000 + i) },
    }));
    const endorsedElsewhere = { eventName: "Endorsed", args: { site: OTHER, peer: at(0x1000) } };
    expect(touchedBy([...spam, endorsedElsewhere], SELF, () => false).size).toBe(0);
  });

  it("tracks this site, those governance admitted or revoked, those this site endorsed, and changes to those known", () => {
    const touched = touchedBy(
      [
        { eventName: "Registered", args: { coordinator: SELF } },
        { eventName: "Admitted", args: { coordinator: at(1) } },
        { eventName: "Revoked", args: { coordinator: at(2) } },
        { eventName: "Endorsed", args: { site: SELF.toUpperCase().replace("0X", "0x") as Address, peer: at(3) } },
        { eventName: "Updated", args: { coordinator: at(4) } },
        { eventName: "KeyRenewed", args: { coordinator: at(5) } },
      ],
      SELF,
      (a) => a === at(4),
    );
    expect([...touched].sort()).toEqual([SELF, at(1), at(2), at(3), at(4)].sort());
  });
});
