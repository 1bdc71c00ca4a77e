import { storageBackends } from "@sharedllm/testkit";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { openDatabase } from "../db/database.js";
import { Fleet } from "../fleet.js";
import { Audits, pickPositions } from "./audits.js";

describe("pickPositions", () => {
  it("draws distinct positions of the part, ascending, at most the count asked and the part's length", () => {
    for (let i = 0; i < 200; i++) {
      const p = pickPositions(10, 30, 8);
      expect(p).toHaveLength(8);
      expect(new Set(p).size).toBe(8);
      expect([...p].sort((a, b) => a - b)).toEqual(p);
      for (const x of p) expect(x >= 10 && x < 30).toBe(true);
    }
    expect(pickPositions(3, 6, 8)).toEqual([3, 4, 5]);
    expect(pickPositions(5, 5, 8)).toEqual([]);
  });

  it("does not favour the start of the part (a node cannot cheat only late)", () => {
    let late = 0;
    for (let i = 0; i < 500; i++) late += pickPositions(0, 100, 1).filter((x) => x >= 50).length;
    expect(late).toBeGreaterThan(200);
    expect(late).toBeLessThan(300);
  });
});

describe.each(storageBackends())("a browser node's audit record on $name", ({ open }) => {
  it("is its wallet's too: a new session key of a wallet with failed audits is audited as a suspect", async () => {
    const db0 = await open();
    const db = await openDatabase(db0);
    try {
      const wallet = "0x00000000000000000000000000000000000000aa";
      const freshKey = "0x00000000000000000000000000000000000000bb";
      const clean = "0x00000000000000000000000000000000000000cc";
      await db
        .insertInto("node_standing")
        .values([
          { node_id: wallet, passed: 0, failed: 1, suspicion: 1 },
          { node_id: freshKey, passed: 10, failed: 0, suspicion: 0 },
          { node_id: clean, passed: 10, failed: 0, suspicion: 0 },
        ])
        .execute();
      await db
        .insertInto("browser_delegations")
        .values({
          session_key: freshKey,
          wallet,
          coordinator: "http://site",
          chain_id: 31337,
          expires_at: new Date(Date.now() + 60_000),
          signature: "0x",
        })
        .execute();
      // a draw above the established rate (0.5), below a suspect's (1)
      const audits = new Audits(db, new Fleet(), pino({ level: "silent" }), {
        auditors: [],
        judge: () => ({ pass: true }),
        random: () => 0.9,
      });
      const candidate = (node: string) => ({
        jobId: `job_${node}`,
        node,
        model: "m",
        modelSha256: "ab".repeat(32),
        kind: "chat" as const,
        request: { messages: [{ role: "user", content: "hi" }] },
        output: [1, 2, 3, 4],
        from: 0,
        promptTokens: 3,
        promptHash: "0x00",
        outputHash: "0x00",
      });
      expect(await db.transaction().execute((tx) => audits.consider(tx, candidate(freshKey)))).toBe(true);
      expect(await db.transaction().execute((tx) => audits.consider(tx, candidate(clean)))).toBe(false);
    } finally {
      await db.destroy();
      await db0.cleanup();
    }
  });
});
