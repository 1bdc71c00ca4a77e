// Events only governance or the operator causes (settings, pauses, sweeps, role admins), kept as
// one generic GovernanceEvent each: name and arguments as text.
import { ethereum } from "@graphprotocol/graph-ts";
import { GovernanceEvent } from "../generated/schema";
import { eventId } from "./accounts";

/** Records `name` with `args` written as name=value pairs separated by commas. */
export function recordGovernanceEvent(name: string, args: string, event: ethereum.Event): void {
  const entity = new GovernanceEvent(eventId(event));
  entity.contract = event.address;
  entity.name = name;
  entity.args = args;
  entity.blockNumber = event.block.number;
  entity.timestamp = event.block.timestamp;
  entity.transactionHash = event.transaction.hash;
  entity.save();
}
