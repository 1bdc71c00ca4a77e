// SPDX-License-Identifier: AGPL-3.0-or-later
pragma solidity 0.8.30;

// Governance of the ledger is OpenZeppelin's TimelockController, unchanged: importing it here makes
// the build compile it and ship its artifact (contracts/src/artifacts.ts) for deployment.
import {TimelockController} from "@openzeppelin/contracts/governance/TimelockController.sol";
