// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title SharedLLM credit ledger
/// @notice Users buy credits (native coin, or a stablecoin where configured) and deposit them into
/// escrow for a coordinator. The coordinator settles in batches: each user's cumulative spend,
/// checked against their escrow, and a Merkle root over every node's cumulative earnings. Nodes
/// claim the difference between their cumulative earnings and what they already claimed, so
/// nothing is paid twice and a missed batch loses nothing.
/// @dev Credits are balances inside the ledger, not an ERC-20: they are a prepaid service unit,
/// not something to trade, and keeping them here saves an approve/transfer round per deposit.
///
/// Keys (docs/security): governance (a TimelockController: every change waits its delay) holds
/// DEFAULT_ADMIN_ROLE, GOVERNOR_ROLE (price, stablecoin, notice, batch cap) and TREASURER_ROLE
/// (sweep). The operator holds PAUSER_ROLE and REGISTRAR_ROLE (grants and revokes COORDINATOR_ROLE
/// at once, so a stolen coordinator key can be cut off without waiting for the timelock). A
/// coordinator settles only escrow deposited for itself, at most `maxBatchSpend` per batch, and
/// never the escrow under a withdrawal whose notice is over.
contract CreditLedger is AccessControl, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant GOVERNOR_ROLE = keccak256("GOVERNOR_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    bytes32 public constant TREASURER_ROLE = keccak256("TREASURER_ROLE");
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");

    /// Two storage slots: what settle() reads for a user costs two cold reads.
    struct Escrow {
        uint128 deposited; // credits deposited, less what was withdrawn
        uint128 spent; // cumulative spend settled by the coordinator
        uint96 pendingWithdrawal;
        uint64 unlockAt;
        uint96 shortfall; // spend the coordinator posted that the escrow could not cover (latest batch)
    }

    struct Settlement {
        uint64 lastBatch;
        bytes32 earningsRoot;
        uint256 totalSpent;
        uint256 totalEarnings;
        uint256 totalClaimed;
    }

    /// Wei paid for one credit (the smallest credit unit).
    uint256 public weiPerCredit;
    IERC20 public stablecoin;
    /// Stablecoin base units paid for one credit; 0 while no stablecoin is configured.
    uint256 public stableUnitsPerCredit;
    uint64 public withdrawalNotice;
    /// Most credits of user spend one settle() may move (governance sets it): bounds what a stolen
    /// coordinator key takes in one transaction.
    uint256 public maxBatchSpend;

    mapping(address account => uint256) public credits;
    mapping(address user => mapping(address coordinator => Escrow)) public escrows;
    mapping(address coordinator => Settlement) public settlements;
    mapping(address coordinator => mapping(address node => uint256)) public claimed;
    /// What a coordinator accepted it owes a peer coordinator, cumulatively, from the peer's signed
    /// receipts for jobs it forwarded there (docs/federation.md, Clearing). A peer settles a
    /// coordinator's escrow with it only up to this: neither site takes more than the other signed.
    mapping(address origin => mapping(address server => uint256)) public accepted;

    event PriceSet(uint256 weiPerCredit);
    event StablecoinSet(address token, uint256 unitsPerCredit);
    event WithdrawalNoticeSet(uint64 seconds_);
    event MaxBatchSpendSet(uint256 credits);
    event SpendShortfall(address indexed user, address indexed coordinator, uint256 posted, uint256 covered);
    event CreditsBought(address indexed buyer, uint256 credits, uint256 paid, address token);
    event Deposited(address indexed user, address indexed coordinator, uint256 amount);
    event WithdrawalRequested(address indexed user, address indexed coordinator, uint256 amount, uint64 unlockAt);
    event Withdrawn(address indexed user, address indexed coordinator, uint256 amount);
    event BatchSettled(
        address indexed coordinator,
        uint64 indexed batchId,
        bytes32 earningsRoot,
        uint256 batchSpent,
        uint256 totalEarnings,
        uint256 users
    );
    event Claimed(address indexed coordinator, address indexed node, uint256 amount, uint256 cumulative);
    event Accepted(address indexed origin, address indexed server, uint256 cumulative);
    event Swept(address indexed to, address token, uint256 amount);

    error ZeroAmount();
    error InexactPayment(uint256 paid, uint256 weiPerCredit);
    error NoStablecoin();
    error InsufficientCredits(uint256 available, uint256 needed);
    error InsufficientEscrow(uint256 available, uint256 needed);
    error NoWithdrawalPending();
    error NoticeNotOver(uint64 unlockAt);
    error BatchOutOfOrder(uint64 expected, uint64 got);
    error LengthMismatch();
    error SpendDecreased(address user, uint256 settled, uint256 posted);
    error BatchSpendAboveCap(uint256 cap, uint256 batchSpent);
    error EarningsDecreased(uint256 settled, uint256 posted);
    error EarningsAboveSpend(uint256 spent, uint256 earnings);
    error InvalidProof();
    error AcceptedDecreased(address server, uint256 accepted, uint256 posted);
    error NothingToClaim();
    error NativeTransferFailed();

    struct Config {
        uint256 weiPerCredit;
        uint64 withdrawalNotice;
        uint256 maxBatchSpend;
        IERC20 stablecoin; // zero: none
        uint256 stableUnitsPerCredit;
    }

    /// @param governance the timelock: every admin, governor and treasurer act waits its delay
    /// @param operator pauses, and grants or revokes coordinators, without delay
    constructor(address governance, address operator, Config memory c) {
        _grantRole(DEFAULT_ADMIN_ROLE, governance);
        _grantRole(GOVERNOR_ROLE, governance);
        _grantRole(TREASURER_ROLE, governance);
        _grantRole(PAUSER_ROLE, operator);
        _grantRole(REGISTRAR_ROLE, operator);
        _setRoleAdmin(COORDINATOR_ROLE, REGISTRAR_ROLE);
        _setPrice(c.weiPerCredit);
        withdrawalNotice = c.withdrawalNotice;
        emit WithdrawalNoticeSet(c.withdrawalNotice);
        _setMaxBatchSpend(c.maxBatchSpend);
        if (address(c.stablecoin) != address(0)) {
            stablecoin = c.stablecoin;
            stableUnitsPerCredit = c.stableUnitsPerCredit;
            emit StablecoinSet(address(c.stablecoin), c.stableUnitsPerCredit);
        }
    }

    // ---- governance ----

    function setPrice(uint256 weiPerCredit_) external onlyRole(GOVERNOR_ROLE) {
        _setPrice(weiPerCredit_);
    }

    function setStablecoin(IERC20 token, uint256 unitsPerCredit) external onlyRole(GOVERNOR_ROLE) {
        stablecoin = token;
        stableUnitsPerCredit = unitsPerCredit;
        emit StablecoinSet(address(token), unitsPerCredit);
    }

    function setWithdrawalNotice(uint64 seconds_) external onlyRole(GOVERNOR_ROLE) {
        withdrawalNotice = seconds_;
        emit WithdrawalNoticeSet(seconds_);
    }

    function setMaxBatchSpend(uint256 cap) external onlyRole(GOVERNOR_ROLE) {
        _setMaxBatchSpend(cap);
    }

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// Moves what buyers paid to the treasury; `token` zero means the native coin.
    function sweep(address payable to, address token, uint256 amount) external onlyRole(TREASURER_ROLE) nonReentrant {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert NativeTransferFailed();
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
        emit Swept(to, token, amount);
    }

    // ---- users ----

    /// Buys credits with the native coin; with a coordinator given they go straight into escrow for it.
    function buy(address coordinator) external payable whenNotPaused returns (uint256 amount) {
        amount = msg.value / weiPerCredit;
        if (amount == 0) revert ZeroAmount();
        if (amount * weiPerCredit != msg.value) revert InexactPayment(msg.value, weiPerCredit);
        emit CreditsBought(msg.sender, amount, msg.value, address(0));
        _credit(msg.sender, coordinator, amount);
    }

    /// Buys `amount` credits with the configured stablecoin (approve first).
    function buyWithToken(uint256 amount, address coordinator) external whenNotPaused nonReentrant {
        if (address(stablecoin) == address(0) || stableUnitsPerCredit == 0) revert NoStablecoin();
        if (amount == 0) revert ZeroAmount();
        uint256 cost = amount * stableUnitsPerCredit;
        stablecoin.safeTransferFrom(msg.sender, address(this), cost);
        emit CreditsBought(msg.sender, amount, cost, address(stablecoin));
        _credit(msg.sender, coordinator, amount);
    }

    /// Moves free credits (bought or claimed) into escrow for a coordinator.
    function deposit(address coordinator, uint256 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        uint256 free = credits[msg.sender];
        if (free < amount) revert InsufficientCredits(free, amount);
        credits[msg.sender] = free - amount;
        _deposit(msg.sender, coordinator, amount);
    }

    /// Announces a withdrawal of unspent escrow; it can be taken after the notice period, which
    /// gives the coordinator time to settle what was already spent.
    function requestWithdrawal(address coordinator, uint256 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        Escrow storage e = escrows[msg.sender][coordinator];
        uint256 unspent = e.deposited - e.spent;
        if (unspent < amount) revert InsufficientEscrow(unspent, amount);
        e.pendingWithdrawal = SafeCast.toUint96(amount);
        e.unlockAt = uint64(block.timestamp) + withdrawalNotice;
        emit WithdrawalRequested(msg.sender, coordinator, amount, e.unlockAt);
    }

    /// Takes the announced withdrawal back into free credits, limited to what is still unspent.
    function withdraw(address coordinator) external whenNotPaused returns (uint256 amount) {
        Escrow storage e = escrows[msg.sender][coordinator];
        if (e.pendingWithdrawal == 0) revert NoWithdrawalPending();
        if (block.timestamp < e.unlockAt) revert NoticeNotOver(e.unlockAt);
        uint256 unspent = e.deposited - e.spent;
        amount = e.pendingWithdrawal < unspent ? e.pendingWithdrawal : unspent;
        e.pendingWithdrawal = 0;
        e.unlockAt = 0;
        e.deposited -= uint128(amount); // at most deposited - spent
        credits[msg.sender] += amount;
        emit Withdrawn(msg.sender, coordinator, amount);
    }

    // ---- settlement ----

    /// Posts one batch: cumulative spend per user (never decreasing) and the Merkle root over every
    /// node's cumulative earnings. Batches are numbered 1, 2, 3... per coordinator, so a batch posted
    /// twice is refused instead of paid twice. Spend above what a user's escrow covers (they withdrew
    /// before it was settled) is clamped and recorded as their shortfall instead of refusing the batch.
    function settle(
        uint64 batchId,
        address[] calldata users,
        uint256[] calldata cumulativeSpent,
        bytes32 earningsRoot,
        uint256 totalEarnings
    ) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        Settlement storage s = settlements[msg.sender];
        if (batchId != s.lastBatch + 1) revert BatchOutOfOrder(s.lastBatch + 1, batchId);
        if (users.length != cumulativeSpent.length) revert LengthMismatch();
        uint256 batchSpent;
        for (uint256 i = 0; i < users.length; ++i) {
            Escrow storage e = escrows[users[i]][msg.sender];
            uint256 posted = cumulativeSpent[i];
            if (posted < e.spent) revert SpendDecreased(users[i], e.spent, posted);
            uint256 covered = _coverable(e);
            // a peer coordinator's escrow: only what it accepted owing this one, from receipts this one signed
            if (hasRole(COORDINATOR_ROLE, users[i])) {
                uint256 ok = accepted[users[i]][msg.sender];
                if (ok < covered) covered = ok;
            }
            uint256 short = posted > covered ? posted - covered : 0;
            if (short != e.shortfall) e.shortfall = SafeCast.toUint96(short);
            if (short != 0) {
                emit SpendShortfall(users[i], msg.sender, posted, covered);
                posted = covered;
            }
            batchSpent += posted - e.spent;
            e.spent = uint128(posted); // at most deposited
        }
        if (batchSpent > maxBatchSpend) revert BatchSpendAboveCap(maxBatchSpend, batchSpent);
        s.totalSpent += batchSpent;
        if (totalEarnings < s.totalEarnings) revert EarningsDecreased(s.totalEarnings, totalEarnings);
        if (totalEarnings > s.totalSpent) revert EarningsAboveSpend(s.totalSpent, totalEarnings);
        s.totalEarnings = totalEarnings;
        s.earningsRoot = earningsRoot;
        s.lastBatch = batchId;
        emit BatchSettled(msg.sender, batchId, earningsRoot, batchSpent, totalEarnings, users.length);
    }

    /// Posts what this coordinator accepted, cumulatively, that it owes each peer coordinator for
    /// jobs it forwarded there: the sum of the peer's signed receipts it checked against what it
    /// relayed. Never decreasing. A peer's settle() takes no more of this coordinator's escrow.
    function accept(address[] calldata servers, uint256[] calldata cumulative) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        if (servers.length != cumulative.length) revert LengthMismatch();
        for (uint256 i = 0; i < servers.length; ++i) {
            uint256 before = accepted[msg.sender][servers[i]];
            if (cumulative[i] < before) revert AcceptedDecreased(servers[i], before, cumulative[i]);
            accepted[msg.sender][servers[i]] = cumulative[i];
            emit Accepted(msg.sender, servers[i], cumulative[i]);
        }
    }

    /// Pays `node` the difference between its cumulative earnings at `coordinator` (proved against
    /// the latest root) and what it already claimed there. Anyone may send it; credits go to the node.
    function claim(address coordinator, address node, uint256 cumulative, bytes32[] calldata proof)
        external
        whenNotPaused
        returns (uint256 amount)
    {
        Settlement storage s = settlements[coordinator];
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(node, cumulative))));
        if (!MerkleProof.verifyCalldata(proof, s.earningsRoot, leaf)) revert InvalidProof();
        uint256 already = claimed[coordinator][node];
        if (cumulative <= already) revert NothingToClaim();
        amount = cumulative - already;
        claimed[coordinator][node] = cumulative;
        s.totalClaimed += amount;
        // the root commits to at most totalEarnings in all; a bad root cannot pay out more
        if (s.totalClaimed > s.totalEarnings) revert EarningsAboveSpend(s.totalEarnings, s.totalClaimed);
        credits[node] += amount;
        emit Claimed(coordinator, node, amount, cumulative);
    }

    // ---- views ----

    /// Escrow a coordinator may still charge: deposited, less settled spend, less an announced withdrawal.
    function available(address user, address coordinator) external view returns (uint256) {
        Escrow storage e = escrows[user][coordinator];
        uint256 unspent = e.deposited - e.spent;
        return e.pendingWithdrawal < unspent ? unspent - e.pendingWithdrawal : 0;
    }

    /// What a coordinator may settle of a user's escrow: all of it while a withdrawal is under notice
    /// (spend made before the announcement is settled then), less the withdrawal once the notice is over.
    function coverable(address user, address coordinator) external view returns (uint256) {
        return _coverable(escrows[user][coordinator]);
    }

    /// Spend a coordinator posted for a user that their escrow could not cover (they withdrew before
    /// it was settled), as of the latest batch that posted them; nodes are paid only what was covered.
    function shortfall(address user, address coordinator) external view returns (uint256) {
        return escrows[user][coordinator].shortfall;
    }

    // ---- internals ----

    function _coverable(Escrow storage e) private view returns (uint256) {
        if (e.pendingWithdrawal == 0 || block.timestamp < e.unlockAt) return e.deposited;
        uint256 unspent = e.deposited - e.spent;
        return e.deposited - (e.pendingWithdrawal < unspent ? e.pendingWithdrawal : unspent);
    }

    function _setMaxBatchSpend(uint256 cap) private {
        maxBatchSpend = cap;
        emit MaxBatchSpendSet(cap);
    }

    function _setPrice(uint256 weiPerCredit_) private {
        if (weiPerCredit_ == 0) revert ZeroAmount();
        weiPerCredit = weiPerCredit_;
        emit PriceSet(weiPerCredit_);
    }

    function _credit(address user, address coordinator, uint256 amount) private {
        if (coordinator == address(0)) credits[user] += amount;
        else _deposit(user, coordinator, amount);
    }

    function _deposit(address user, address coordinator, uint256 amount) private {
        escrows[user][coordinator].deposited += SafeCast.toUint128(amount);
        emit Deposited(user, coordinator, amount);
    }
}
