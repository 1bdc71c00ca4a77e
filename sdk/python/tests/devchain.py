"""The dev chain `sharedllm up` runs (Hardhat's node, with its well-known funded test wallets), seen
from a test: buy credits into escrow for the coordinator with a signed transaction over JSON-RPC.

There is no CLI command that deposits for a wallet, so this does what test/chain.ts `deposit`
does with viem: CreditLedger.buy(coordinator) paying credits x wei-per-credit in the native coin.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

TEST_MNEMONIC = "test test test test test test test test test test test junk"
#: dev chain price (cli/src/chain.ts DEV_WEI_PER_CREDIT): 1 credit = 1 gwei
DEV_WEI_PER_CREDIT = 1_000_000_000

Account.enable_unaudited_hdwallet_features()


def dev_wallet(index: int) -> LocalAccount:
    """One of the dev chain's funded wallets (index 0 deploys the contracts)."""
    return Account.from_mnemonic(TEST_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def _rpc(rpc_url: str, method: str, *params: Any) -> Any:
    res = httpx.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}, timeout=15)
    res.raise_for_status()
    body = res.json()
    if "error" in body:
        raise RuntimeError(f"{method} failed on the dev chain: {body['error']}")
    return body["result"]


def buy_credits(rpc_url: str, ledger: str, coordinator: str, account: LocalAccount, credits: int) -> None:
    """Buys `credits` into escrow for `coordinator`, and waits for the transaction to succeed."""
    data = "0x" + keccak(text="buy(address)")[:4].hex() + to_checksum_address(coordinator)[2:].lower().rjust(64, "0")
    tx: dict[str, Any] = {
        "from": account.address,
        "to": to_checksum_address(ledger),
        "value": credits * DEV_WEI_PER_CREDIT,
        "data": data,
    }
    gas = int(_rpc(rpc_url, "eth_estimateGas", {**tx, "value": hex(tx["value"])}), 16)
    tx.pop("from")
    tx.update(
        gas=gas * 2,
        gasPrice=int(_rpc(rpc_url, "eth_gasPrice"), 16),
        nonce=int(_rpc(rpc_url, "eth_getTransactionCount", account.address, "pending"), 16),
        chainId=int(_rpc(rpc_url, "eth_chainId"), 16),
    )
    raw = account.sign_transaction(tx).raw_transaction
    tx_hash = _rpc(rpc_url, "eth_sendRawTransaction", "0x" + raw.hex().removeprefix("0x"))
    deadline = time.monotonic() + 30
    while (receipt := _rpc(rpc_url, "eth_getTransactionReceipt", tx_hash)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the deposit {tx_hash} was not mined within 30 s")
        time.sleep(0.1)
    if receipt["status"] != "0x1":
        raise RuntimeError(f"the deposit {tx_hash} reverted")
