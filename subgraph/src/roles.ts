// AccessControl events of both contracts: every grant and revoke as a RoleChange, and the ledger's
// COORDINATOR_ROLE as the Coordinator entity and Account.isCoordinator.
import { Address, ByteArray, Bytes, crypto, ethereum } from "@graphprotocol/graph-ts";
import { Coordinator, RoleChange } from "../generated/schema";
import { eventId, loadAccount } from "./accounts";

/** keccak256("COORDINATOR_ROLE"), as CreditLedger.COORDINATOR_ROLE. */
export const COORDINATOR_ROLE = Bytes.fromByteArray(crypto.keccak256(ByteArray.fromUTF8("COORDINATOR_ROLE")));

/** Records a RoleGranted (granted true) or RoleRevoked (false) of either contract. */
export function recordRoleChange(role: Bytes, account: Address, sender: Address, granted: boolean, event: ethereum.Event): void {
  const change = new RoleChange(eventId(event));
  change.contract = event.address;
  change.role = role;
  change.account = loadAccount(account, event).id;
  change.sender = sender;
  change.granted = granted;
  change.blockNumber = event.block.number;
  change.timestamp = event.block.timestamp;
  change.transactionHash = event.transaction.hash;
  change.save();
}

/** A grant or revoke of the ledger's COORDINATOR_ROLE: the account becomes, or stops being, a coordinator. */
export function setCoordinator(address: Address, active: boolean, event: ethereum.Event): void {
  const account = loadAccount(address, event);
  account.isCoordinator = active;
  account.save();
  let coordinator = Coordinator.load(address);
  if (coordinator == null) {
    coordinator = new Coordinator(address);
    coordinator.account = account.id;
    coordinator.grantedAt = event.block.timestamp;
  }
  coordinator.active = active;
  if (active) {
    coordinator.grantedAt = event.block.timestamp;
    coordinator.revokedAt = null;
  } else {
    coordinator.revokedAt = event.block.timestamp;
  }
  coordinator.save();
}
