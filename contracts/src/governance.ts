/**
 * Governance changes to the ledger go through its TimelockController: the operator schedules a
 * call, anyone can see it on chain during the delay (and the operator can cancel it), then it is
 * executed. These build the timelock's schedule / execute arguments for one call.
 */
import { type Abi, type Address, encodeFunctionData, type Hex, keccak256, stringToBytes } from "viem";

export interface GovernanceCall {
  target: Address;
  data: Hex;
  /** distinguishes two otherwise identical calls */
  salt: Hex;
}

const NO_PREDECESSOR = `0x${"0".repeat(64)}` as Hex;

/** One call of `functionName` on `target`, to be scheduled on the timelock. */
export function governanceCall(
  target: Address,
  abi: Abi,
  functionName: string,
  args: readonly unknown[],
  salt = "sharedllm",
): GovernanceCall {
  return { target, data: encodeFunctionData({ abi, functionName, args } as never), salt: keccak256(stringToBytes(salt)) };
}

/** Arguments of TimelockController.schedule(target, value, data, predecessor, salt, delay). */
export const scheduleArgs = (c: GovernanceCall, delaySeconds: bigint) =>
  [c.target, 0n, c.data, NO_PREDECESSOR, c.salt, delaySeconds] as const;

/** Arguments of TimelockController.execute(target, value, data, predecessor, salt). */
export const executeArgs = (c: GovernanceCall) => [c.target, 0n, c.data, NO_PREDECESSOR, c.salt] as const;
