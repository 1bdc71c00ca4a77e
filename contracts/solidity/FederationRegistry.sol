// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title SharedLLM federation registry
/// @notice Coordinators register their address, public key and URL; governance admits or revokes
/// them; admitted coordinators endorse peers. A site trusts a peer that is admitted or that it
/// endorsed itself, unless governance revoked it.
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
    }

    mapping(address coordinator => Coordinator) private _coordinators;
    mapping(address site => mapping(address peer => bool)) public endorsed;
    address[] private _registered;

    event Registered(address indexed coordinator, bytes publicKey, string url, string metadata);
    event Updated(address indexed coordinator, string url, string metadata);
    event Admitted(address indexed coordinator);
    event Revoked(address indexed coordinator);
    event Endorsed(address indexed site, address indexed peer, bool endorsed);

    error KeyNotSender();
    error AlreadyRegistered();
    error NotRegistered(address coordinator);
    error NotAdmitted(address coordinator);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GOVERNOR_ROLE, admin);
    }

    /// Registers the sender; the public key must be the sender's own (its keccak hash gives the address).
    function register(bytes calldata publicKey, string calldata url, string calldata metadata) external {
        if (publicKey.length != 64 || address(uint160(uint256(keccak256(publicKey)))) != msg.sender) revert KeyNotSender();
        Coordinator storage c = _coordinators[msg.sender];
        if (c.status != Status.None) revert AlreadyRegistered();
        c.publicKey = publicKey;
        c.url = url;
        c.metadata = metadata;
        c.status = Status.Pending;
        c.registeredAt = uint64(block.timestamp);
        _registered.push(msg.sender);
        emit Registered(msg.sender, publicKey, url, metadata);
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

    /// An admitted coordinator vouches for (or stops vouching for) a registered peer.
    function endorse(address peer, bool value) external {
        if (_coordinators[msg.sender].status != Status.Admitted) revert NotAdmitted(msg.sender);
        if (_coordinators[peer].status == Status.None) revert NotRegistered(peer);
        endorsed[msg.sender][peer] = value;
        emit Endorsed(msg.sender, peer, value);
    }

    function isTrusted(address site, address peer) external view returns (bool) {
        Status s = _coordinators[peer].status;
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
