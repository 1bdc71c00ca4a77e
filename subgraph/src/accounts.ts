// Accounts as they first appear in either contract, and the ids the mappings give entities.
// AssemblyScript (compiled by `graph build`), not TypeScript: no closures, no union types.
import { Address, BigInt, Bytes, ethereum } from "@graphprotocol/graph-ts";
import { Account } from "../generated/schema";

/** The Account for `address`, created (and saved) with zero totals when it first appears. */
export function loadAccount(address: Address, event: ethereum.Event): Account {
  let account = Account.load(address);
  if (account == null) {
    account = new Account(address);
    account.firstSeenBlock = event.block.number;
    account.firstSeenAt = event.block.timestamp;
    account.creditsBought = BigInt.zero();
    account.creditsClaimed = BigInt.zero();
    account.isCoordinator = false;
    account.save();
  }
  return account;
}

/** Id of an entity that is one event: its transaction hash and log index. */
export function eventId(event: ethereum.Event): Bytes {
  return event.transaction.hash.concatI32(event.logIndex.toI32());
}

/** Id of an entity kept per pair of addresses (user and coordinator, origin and server, site and peer). */
export function pairId(a: Address, b: Address): Bytes {
  return a.concat(b);
}
