// Mappings of FederationRegistry: one handler per event of its ABI (subgraph.yaml lists them; the
// subgraph test checks the list against the ABI).
import { Address, ethereum, log } from "@graphprotocol/graph-ts";
import {
  Admitted,
  Endorsed,
  KeyRenewed,
  Registered,
  Revoked,
  RoleAdminChanged,
  RoleGranted,
  RoleRevoked,
  Updated,
} from "../generated/FederationRegistry/FederationRegistry";
import { Admission, Endorsement, EndorsementChange, KeyRenewal, Revocation, Site } from "../generated/schema";
import { eventId, loadAccount, pairId } from "./accounts";
import { recordGovernanceEvent } from "./governance";
import { recordRoleChange } from "./roles";

/** The registered site at `address`; null (logged) if it never registered, which the contract rules out. */
function loadSite(address: Address, event: ethereum.Event): Site | null {
  const site = Site.load(address);
  if (site == null) {
    log.warning("FederationRegistry event for {} which never registered (tx {})", [
      address.toHexString(),
      event.transaction.hash.toHexString(),
    ]);
  }
  return site;
}

export function handleRegistered(event: Registered): void {
  const p = event.params;
  const site = new Site(p.coordinator);
  site.account = loadAccount(p.coordinator, event).id;
  site.publicKey = p.publicKey;
  site.keyId = p.keyId;
  site.validUntil = p.validUntil;
  site.url = p.url;
  site.metadata = p.metadata;
  site.status = "Pending";
  site.registeredAt = event.block.timestamp;
  site.updatedAt = event.block.timestamp;
  site.save();
}

export function handleKeyRenewed(event: KeyRenewed): void {
  const site = loadSite(event.params.coordinator, event);
  if (site == null) return;
  site.keyId = event.params.keyId;
  site.validUntil = event.params.validUntil;
  site.updatedAt = event.block.timestamp;
  site.save();
  const renewal = new KeyRenewal(eventId(event));
  renewal.site = site.id;
  renewal.keyId = site.keyId;
  renewal.validUntil = site.validUntil;
  renewal.blockNumber = event.block.number;
  renewal.timestamp = event.block.timestamp;
  renewal.transactionHash = event.transaction.hash;
  renewal.save();
}

export function handleUpdated(event: Updated): void {
  const site = loadSite(event.params.coordinator, event);
  if (site == null) return;
  site.url = event.params.url;
  site.metadata = event.params.metadata;
  site.updatedAt = event.block.timestamp;
  site.save();
}

export function handleAdmitted(event: Admitted): void {
  const site = loadSite(event.params.coordinator, event);
  if (site == null) return;
  site.status = "Admitted";
  site.updatedAt = event.block.timestamp;
  site.save();
  const admission = new Admission(eventId(event));
  admission.site = site.id;
  admission.blockNumber = event.block.number;
  admission.timestamp = event.block.timestamp;
  admission.transactionHash = event.transaction.hash;
  admission.save();
}

export function handleRevoked(event: Revoked): void {
  const site = loadSite(event.params.coordinator, event);
  if (site == null) return;
  site.status = "Revoked";
  site.updatedAt = event.block.timestamp;
  site.save();
  const revocation = new Revocation(eventId(event));
  revocation.site = site.id;
  revocation.blockNumber = event.block.number;
  revocation.timestamp = event.block.timestamp;
  revocation.transactionHash = event.transaction.hash;
  revocation.save();
}

export function handleEndorsed(event: Endorsed): void {
  const peer = loadSite(event.params.peer, event);
  if (peer == null) return;
  const id = pairId(event.params.site, event.params.peer);
  let endorsement = Endorsement.load(id);
  if (endorsement == null) {
    endorsement = new Endorsement(id);
    endorsement.endorser = loadAccount(event.params.site, event).id;
    endorsement.peer = peer.id;
  }
  endorsement.endorsed = event.params.endorsed;
  endorsement.updatedAt = event.block.timestamp;
  endorsement.save();
  const change = new EndorsementChange(eventId(event));
  change.endorsement = endorsement.id;
  change.endorsed = event.params.endorsed;
  change.blockNumber = event.block.number;
  change.timestamp = event.block.timestamp;
  change.transactionHash = event.transaction.hash;
  change.save();
}

// ---- roles (the registry's admin and governor) ----

export function handleRoleGranted(event: RoleGranted): void {
  recordRoleChange(event.params.role, event.params.account, event.params.sender, true, event);
}

export function handleRoleRevoked(event: RoleRevoked): void {
  recordRoleChange(event.params.role, event.params.account, event.params.sender, false, event);
}

export function handleRoleAdminChanged(event: RoleAdminChanged): void {
  const p = event.params;
  const args =
    "role=" +
    p.role.toHexString() +
    ",previousAdminRole=" +
    p.previousAdminRole.toHexString() +
    ",newAdminRole=" +
    p.newAdminRole.toHexString();
  recordGovernanceEvent("RoleAdminChanged", args, event);
}
