import type { Address, Hex } from "viem";
import { describe, expect, it } from "vitest";
import { batchUserRows, HISTORY_TABLES, rowOf } from "./entities.js";

const log = (eventName: string, args: Record<string, unknown>) => ({
  eventName,
  args,
  address: "0xAbCdEf0000000000000000000000000000000001" as Address,
  transactionHash: `0x${"AB".repeat(32)}` as Hex,
  logIndex: 4,
  blockNumber: 17n,
});
const USER = "0x1111111111111111111111111111111111111AbC" as Address;
const COORD = "0x2222222222222222222222222222222222222dEf" as Address;

describe("rowOf", () => {
  it("puts an event in its table, its arguments in snake-case columns, addresses and hashes in lower case", () => {
    expect(rowOf(log("WithdrawalRequested", { user: USER, coordinator: COORD, amount: 5n, unlockAt: 99n }), 1_700_000_000n)).toEqual({
      table: "withdrawal_requests",
      row: {
        tx_hash: `0x${"ab".repeat(32)}`,
        log_index: 4,
        block_number: 17n,
        timestamp: 1_700_000_000n,
        contract: "0xabcdef0000000000000000000000000000000001",
        user: USER.toLowerCase(),
        coordinator: COORD.toLowerCase(),
        amount: 5n,
        unlock_at: 99n,
      },
    });
  });

  it("stores a string anyone put on chain even with a NUL in it, which PostgreSQL refuses in text", () => {
    const r = rowOf(log("Updated", { coordinator: COORD, url: "https://x\u0000.example", metadata: "\u0000{}" }), 1n);
    expect(r?.row).toMatchObject({ url: "https://x\uFFFD.example", metadata: "\uFFFD{}" });
  });

  it("keeps small integers as bigint and says whether a role was granted or revoked", () => {
    expect(rowOf(log("KeyRenewed", { coordinator: COORD, keyId: 2, validUntil: 9n }), 0n)?.row).toMatchObject({
      key_id: 2n,
      valid_until: 9n,
    });
    const role = `0x${"0".repeat(63)}1` as Hex;
    expect(rowOf(log("RoleRevoked", { role, account: USER, sender: COORD }), 0n)).toMatchObject({
      table: "role_changes",
      row: { role, account: USER.toLowerCase(), granted: false },
    });
  });

  it("keeps governance settings as the subgraph's GovernanceEvent: name and name=value text", () => {
    expect(rowOf(log("StablecoinSet", { token: COORD, unitsPerCredit: 3n }), 0n)).toMatchObject({
      table: "governance_events",
      row: { name: "StablecoinSet", args: `token=${COORD.toLowerCase()},unitsPerCredit=3` },
    });
    expect(rowOf(log("NoSuchEvent", {}), 0n)).toBeUndefined();
  });

  it("has a table for every event and the settle call's users", () => {
    expect(HISTORY_TABLES).toContain("settlement_batch_users");
    expect(HISTORY_TABLES).toContain("governance_events");
    const rows = batchUserRows(log("BatchSettled", { coordinator: COORD }), 5n, { users: [USER], cumulativeSpent: [42n] });
    expect(rows).toEqual([
      expect.objectContaining({ position: 0, user: USER.toLowerCase(), coordinator: COORD.toLowerCase(), cumulative_spent: 42n }),
    ]);
  });
});
