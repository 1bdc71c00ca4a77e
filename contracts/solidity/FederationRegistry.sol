// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title SharedLLM federation registry
/// @notice Coordinators register their address, public key, key id, valid-until and URL; governance
/// admits or revokes them; admitted coordinators endorse peers. A site trusts a peer that is
/// admitted or that it endorsed itself, unless governance revoked it or the peer's key expired.
/// @dev The public key is the coordinator's own account key (its keccak hash gives the address),
/// so it cannot change for an address: `renewKey` gives it a new key id and valid-until, which
/// also changes every per-pair key derived from it (docs/federation.md). A new secret key means
/// registering a new address.
contract FederationRegistry is AccessControl {
    bytes32 public constant GOVERNOR_ROLE = keccak256("GOVERNOR_ROLE");

    enum Status {
        None,
        Pending,
        Admitted,
        Revoked
    }

    struct Coordinator {
        bytes publicKey; // uncompressed secp256k1 point without the 0x04 prefix (64 bytes)
        string url;
        string metadata;
        Status status;
        uint64 registeredAt;
        uint32 keyId; // bumped by each renewal; peers name it in every signed request
        uint64 validUntil; // unix seconds: after it the key is not trusted
    }

    mapping(address coordinator => Coordinator) private _coordinators;
    mapping(address site => mapping(address peer => bool)) public endorsed;
    address[] private _registered;

    event Registered(address indexed coordinator, bytes publicKey, uint32 keyId, uint64 validUntil, string url, string metadata);
    event KeyRenewed(address indexed coordinator, uint32 keyId, uint64 validUntil);
    event Updated(address indexed coordinator, string url, string metadata);
    event Admitted(address indexed coordinator);
    event Revoked(address indexed coordinator);
    event Endorsed(address indexed site, address indexed peer, bool endorsed);

    error KeyNotSender();
    error AlreadyRegistered();
    error NotRegistered(address coordinator);
    error NotAdmitted(address coordinator);
    error KeyExpired(uint64 validUntil);
    error KeyIdNotIncreasing(uint32 current, uint32 given);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GOVERNOR_ROLE, admin);
    }

    /// Registers the sender; the public key must be the sender's own (its keccak hash gives the
    /// address) and valid until a time still to come.
    function register(bytes calldata publicKey, uint32 keyId, uint64 validUntil, string calldata url, string calldata metadata)
        external
    {
        if (publicKey.length != 64 || address(uint160(uint256(keccak256(publicKey)))) != msg.sender) revert KeyNotSender();
        if (validUntil <= block.timestamp) revert KeyExpired(validUntil);
        Coordinator storage c = _coordinators[msg.sender];
        if (c.status != Status.None) revert AlreadyRegistered();
        c.publicKey = publicKey;
        c.url = url;
        c.metadata = metadata;
        c.status = Status.Pending;
        c.registeredAt = uint64(block.timestamp);
        c.keyId = keyId;
        c.validUntil = validUntil;
        _registered.push(msg.sender);
        emit Registered(msg.sender, publicKey, keyId, validUntil, url, metadata);
    }

    /// The sender's key gets a new id (greater than the current one) and valid-until: the renewal
    /// before expiry, or a rotation of every per-pair key derived from it. Status is unchanged.
    function renewKey(uint32 keyId, uint64 validUntil) external {
        Coordinator storage c = _coordinators[msg.sender];
        if (c.status == Status.None) revert NotRegistered(msg.sender);
        if (keyId <= c.keyId) revert KeyIdNotIncreasing(c.keyId, keyId);
        if (validUntil <= block.timestamp) revert KeyExpired(validUntil);
        c.keyId = keyId;
        c.validUntil = validUntil;
        emit KeyRenewed(msg.sender, keyId, validUntil);
    }

    function update(string calldata url, string calldata metadata) external {
        Coordinator storage c = _coordinators[msg.sender];
        if (c.status == Status.None) revert NotRegistered(msg.sender);
        c.url = url;
        c.metadata = metadata;
        emit Updated(msg.sender, url, metadata);
    }

    function admit(address coordinator) external onlyRole(GOVERNOR_ROLE) {
        Coordinator storage c = _coordinators[coordinator];
        if (c.status == Status.None) revert NotRegistered(coordinator);
        c.status = Status.Admitted;
        emit Admitted(coordinator);
    }

    function revoke(address coordinator) external onlyRole(GOVERNOR_ROLE) {
        Coordinator storage c = _coordinators[coordinator];
        if (c.status == Status.None) revert NotRegistered(coordinator);
        c.status = Status.Revoked;
        emit Revoked(coordinator);
    }

    /// An admitted coordinator vouches for a registered peer; any coordinator (one revoked
    /// since, too) may stop vouching for one.
    function endorse(address peer, bool value) external {
        if (value && _coordinators[msg.sender].status != Status.Admitted) revert NotAdmitted(msg.sender);
        if (_coordinators[peer].status == Status.None) revert NotRegistered(peer);
        endorsed[msg.sender][peer] = value;
        emit Endorsed(msg.sender, peer, value);
    }

    /// Whether `site` may trust `peer` now: admitted, or endorsed by `site` while pending; never
    /// when revoked or once the peer's key expired (by this block's time: a reader checks its own
    /// clock too, since expiry happens without a transaction).
    function isTrusted(address site, address peer) external view returns (bool) {
        Coordinator storage c = _coordinators[peer];
        if (c.validUntil <= block.timestamp) return false;
        Status s = c.status;
        if (s == Status.Admitted) return true;
        return s == Status.Pending && endorsed[site][peer];
    }

    function getCoordinator(address account) external view returns (Coordinator memory) {
        return _coordinators[account];
    }

    function coordinators() external view returns (address[] memory) {
        return _registered;
    }
}
