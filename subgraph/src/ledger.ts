// Mappings of CreditLedger: one handler per event of its ABI (subgraph.yaml lists them; the
// subgraph test checks the list against the ABI).
import { Address, BigInt, ByteArray, Bytes, ethereum } from "@graphprotocol/graph-ts";
import {
  Accepted,
  BatchSettled,
  Claimed,
  CreditsBought,
  Deposited,
  MaxBatchSpendSet,
  Paused,
  PriceSet,
  RoleAdminChanged,
  RoleGranted,
  RoleRevoked,
  SpendShortfall,
  StablecoinSet,
  Swept,
  Unpaused,
  WithdrawalNoticeSet,
  WithdrawalRequested,
  Withdrawn,
} from "../generated/CreditLedger/CreditLedger";
import {
  Acceptance,
  Claim,
  CreditPurchase,
  Deposit,
  Escrow,
  FederationDebt,
  LedgerConfig,
  SettlementBatch,
  SpendShortfall as SpendShortfallEntity,
  Withdrawal,
  WithdrawalRequest,
} from "../generated/schema";
import { eventId, loadAccount, pairId } from "./accounts";
import { recordGovernanceEvent } from "./governance";
import { COORDINATOR_ROLE, recordRoleChange, setCoordinator } from "./roles";

function loadEscrow(user: Address, coordinator: Address, event: ethereum.Event): Escrow {
  const id = pairId(user, coordinator);
  let escrow = Escrow.load(id);
  if (escrow == null) {
    escrow = new Escrow(id);
    escrow.user = loadAccount(user, event).id;
    escrow.coordinator = loadAccount(coordinator, event).id;
    escrow.deposited = BigInt.zero();
    escrow.withdrawn = BigInt.zero();
    escrow.pendingWithdrawal = BigInt.zero();
    escrow.unlockAt = BigInt.zero();
    escrow.lastShortfall = BigInt.zero();
  }
  return escrow;
}

/** The ledger's settings; the constructor's events create it, each setting event updates it. */
function loadConfig(event: ethereum.Event): LedgerConfig {
  let config = LedgerConfig.load(event.address);
  if (config == null) {
    config = new LedgerConfig(event.address);
    config.weiPerCredit = BigInt.zero();
    config.stablecoin = Address.zero();
    config.stableUnitsPerCredit = BigInt.zero();
    config.withdrawalNotice = BigInt.zero();
    config.maxBatchSpend = BigInt.zero();
    config.paused = false;
  }
  return config;
}

// ---- users ----

export function handleCreditsBought(event: CreditsBought): void {
  const buyer = loadAccount(event.params.buyer, event);
  buyer.creditsBought = buyer.creditsBought.plus(event.params.credits);
  buyer.save();
  const purchase = new CreditPurchase(eventId(event));
  purchase.buyer = buyer.id;
  purchase.credits = event.params.credits;
  purchase.paid = event.params.paid;
  purchase.token = event.params.token;
  purchase.blockNumber = event.block.number;
  purchase.timestamp = event.block.timestamp;
  purchase.transactionHash = event.transaction.hash;
  purchase.save();
}

export function handleDeposited(event: Deposited): void {
  const escrow = loadEscrow(event.params.user, event.params.coordinator, event);
  escrow.deposited = escrow.deposited.plus(event.params.amount);
  escrow.save();
  const deposit = new Deposit(eventId(event));
  deposit.escrow = escrow.id;
  deposit.user = escrow.user;
  deposit.coordinator = escrow.coordinator;
  deposit.amount = event.params.amount;
  deposit.blockNumber = event.block.number;
  deposit.timestamp = event.block.timestamp;
  deposit.transactionHash = event.transaction.hash;
  deposit.save();
}

export function handleWithdrawalRequested(event: WithdrawalRequested): void {
  const escrow = loadEscrow(event.params.user, event.params.coordinator, event);
  escrow.pendingWithdrawal = event.params.amount;
  escrow.unlockAt = event.params.unlockAt;
  escrow.save();
  const request = new WithdrawalRequest(eventId(event));
  request.escrow = escrow.id;
  request.user = escrow.user;
  request.coordinator = escrow.coordinator;
  request.amount = event.params.amount;
  request.unlockAt = event.params.unlockAt;
  request.blockNumber = event.block.number;
  request.timestamp = event.block.timestamp;
  request.transactionHash = event.transaction.hash;
  request.save();
}

export function handleWithdrawn(event: Withdrawn): void {
  const escrow = loadEscrow(event.params.user, event.params.coordinator, event);
  escrow.withdrawn = escrow.withdrawn.plus(event.params.amount);
  escrow.pendingWithdrawal = BigInt.zero();
  escrow.unlockAt = BigInt.zero();
  escrow.save();
  const withdrawal = new Withdrawal(eventId(event));
  withdrawal.escrow = escrow.id;
  withdrawal.user = escrow.user;
  withdrawal.coordinator = escrow.coordinator;
  withdrawal.amount = event.params.amount;
  withdrawal.blockNumber = event.block.number;
  withdrawal.timestamp = event.block.timestamp;
  withdrawal.transactionHash = event.transaction.hash;
  withdrawal.save();
}

// ---- settlement ----

export function handleBatchSettled(event: BatchSettled): void {
  const coordinator = loadAccount(event.params.coordinator, event);
  const batch = new SettlementBatch(coordinator.id.concat(Bytes.fromByteArray(ByteArray.fromU64(event.params.batchId.toU64()))));
  batch.coordinator = coordinator.id;
  batch.batchId = event.params.batchId;
  batch.earningsRoot = event.params.earningsRoot;
  batch.batchSpent = event.params.batchSpent;
  batch.totalEarnings = event.params.totalEarnings;
  batch.users = event.params.users;
  batch.blockNumber = event.block.number;
  batch.timestamp = event.block.timestamp;
  batch.transactionHash = event.transaction.hash;
  batch.save();
}

export function handleSpendShortfall(event: SpendShortfall): void {
  const escrow = loadEscrow(event.params.user, event.params.coordinator, event);
  escrow.lastShortfall = event.params.posted.minus(event.params.covered);
  escrow.save();
  const shortfall = new SpendShortfallEntity(eventId(event));
  shortfall.escrow = escrow.id;
  shortfall.user = escrow.user;
  shortfall.coordinator = escrow.coordinator;
  shortfall.posted = event.params.posted;
  shortfall.covered = event.params.covered;
  shortfall.blockNumber = event.block.number;
  shortfall.timestamp = event.block.timestamp;
  shortfall.transactionHash = event.transaction.hash;
  shortfall.save();
}

export function handleClaimed(event: Claimed): void {
  const coordinator = loadAccount(event.params.coordinator, event);
  const node = loadAccount(event.params.node, event);
  node.creditsClaimed = node.creditsClaimed.plus(event.params.amount);
  node.save();
  const claim = new Claim(eventId(event));
  claim.coordinator = coordinator.id;
  claim.node = node.id;
  claim.amount = event.params.amount;
  claim.cumulative = event.params.cumulative;
  claim.blockNumber = event.block.number;
  claim.timestamp = event.block.timestamp;
  claim.transactionHash = event.transaction.hash;
  claim.save();
}

export function handleAccepted(event: Accepted): void {
  const id = pairId(event.params.origin, event.params.server);
  let debt = FederationDebt.load(id);
  if (debt == null) {
    debt = new FederationDebt(id);
    debt.origin = loadAccount(event.params.origin, event).id;
    debt.server = loadAccount(event.params.server, event).id;
  }
  debt.accepted = event.params.cumulative;
  debt.updatedAt = event.block.timestamp;
  debt.save();
  const acceptance = new Acceptance(eventId(event));
  acceptance.debt = debt.id;
  acceptance.origin = debt.origin;
  acceptance.server = debt.server;
  acceptance.cumulative = event.params.cumulative;
  acceptance.blockNumber = event.block.number;
  acceptance.timestamp = event.block.timestamp;
  acceptance.transactionHash = event.transaction.hash;
  acceptance.save();
}

// ---- roles ----

export function handleRoleGranted(event: RoleGranted): void {
  recordRoleChange(event.params.role, event.params.account, event.params.sender, true, event);
  if (event.params.role.equals(COORDINATOR_ROLE)) setCoordinator(event.params.account, true, event);
}

export function handleRoleRevoked(event: RoleRevoked): void {
  recordRoleChange(event.params.role, event.params.account, event.params.sender, false, event);
  if (event.params.role.equals(COORDINATOR_ROLE)) setCoordinator(event.params.account, false, event);
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

// ---- governance and operator ----

export function handlePriceSet(event: PriceSet): void {
  const config = loadConfig(event);
  config.weiPerCredit = event.params.weiPerCredit;
  config.save();
  recordGovernanceEvent("PriceSet", "weiPerCredit=" + event.params.weiPerCredit.toString(), event);
}

export function handleStablecoinSet(event: StablecoinSet): void {
  const config = loadConfig(event);
  config.stablecoin = event.params.token;
  config.stableUnitsPerCredit = event.params.unitsPerCredit;
  config.save();
  const args = "token=" + event.params.token.toHexString() + ",unitsPerCredit=" + event.params.unitsPerCredit.toString();
  recordGovernanceEvent("StablecoinSet", args, event);
}

export function handleWithdrawalNoticeSet(event: WithdrawalNoticeSet): void {
  const config = loadConfig(event);
  config.withdrawalNotice = event.params.seconds_;
  config.save();
  recordGovernanceEvent("WithdrawalNoticeSet", "seconds_=" + event.params.seconds_.toString(), event);
}

export function handleMaxBatchSpendSet(event: MaxBatchSpendSet): void {
  const config = loadConfig(event);
  config.maxBatchSpend = event.params.credits;
  config.save();
  recordGovernanceEvent("MaxBatchSpendSet", "credits=" + event.params.credits.toString(), event);
}

export function handlePaused(event: Paused): void {
  const config = loadConfig(event);
  config.paused = true;
  config.save();
  recordGovernanceEvent("Paused", "account=" + event.params.account.toHexString(), event);
}

export function handleUnpaused(event: Unpaused): void {
  const config = loadConfig(event);
  config.paused = false;
  config.save();
  recordGovernanceEvent("Unpaused", "account=" + event.params.account.toHexString(), event);
}

export function handleSwept(event: Swept): void {
  const p = event.params;
  const args = "to=" + p.to.toHexString() + ",token=" + p.token.toHexString() + ",amount=" + p.amount.toString();
  recordGovernanceEvent("Swept", args, event);
}
