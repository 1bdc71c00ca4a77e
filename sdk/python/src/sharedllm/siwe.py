"""Sign-In with Ethereum (EIP-4361) messages, written exactly as the coordinator reads them.

The coordinator parses the message with viem's ``parseSiweMessage`` and checks that its domain
and URI are one of its public origins, its chain is the ledger's chain and its nonce is one it
gave out; the text below is what viem's ``createSiweMessage`` writes for the same fields (the
CLI signs in that way, cli/src/chain.ts).
"""

from __future__ import annotations

from datetime import UTC, datetime

from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

STATEMENT = "Sign in to SharedLLM"


def _iso(t: datetime) -> str:
    # JavaScript's toISOString(): UTC, milliseconds, Z
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def siwe_message(
    *,
    domain: str,
    uri: str,
    address: str,
    chain_id: int,
    nonce: str,
    statement: str | None = STATEMENT,
    issued_at: datetime | None = None,
    expiration_time: datetime | None = None,
) -> str:
    """The EIP-4361 text for these fields. ``domain`` is the coordinator's host[:port], ``uri`` its origin."""
    if statement is not None and "\n" in statement:
        raise ValueError("a sign-in statement is one line")
    head = f"{domain} wants you to sign in with your Ethereum account:\n{to_checksum_address(address)}\n\n"
    if statement:
        head += f"{statement}\n"
    tail = f"URI: {uri}\nVersion: 1\nChain ID: {chain_id}\nNonce: {nonce}\nIssued At: {_iso(issued_at or datetime.now(UTC))}"
    if expiration_time is not None:
        tail += f"\nExpiration Time: {_iso(expiration_time)}"
    return f"{head}\n{tail}"


def sign_message(account: LocalAccount, message: str) -> str:
    """The wallet's EIP-191 personal signature of the message, 0x-prefixed hex."""
    signature = account.sign_message(encode_defunct(text=message)).signature.hex()
    return signature if signature.startswith("0x") else f"0x{signature}"
