"""The sign-in message is the exact text viem writes for the same fields (no coordinator needed)."""

from datetime import UTC, datetime

from eth_account import Account
from eth_account.messages import encode_defunct

from sharedllm.siwe import sign_message, siwe_message

# createSiweMessage({ address, chainId: 31337, domain: "127.0.0.1:8787", nonce: "abcdEFGH1234",
#   uri: "http://127.0.0.1:8787", version: "1", statement: "Sign in to SharedLLM", issuedAt }) in viem
VIEM = (
    "127.0.0.1:8787 wants you to sign in with your Ethereum account:\n"
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n\n"
    "Sign in to SharedLLM\n\n"
    "URI: http://127.0.0.1:8787\nVersion: 1\nChain ID: 31337\nNonce: abcdEFGH1234\n"
    "Issued At: 2026-11-30T16:40:29.123Z"
)


def test_message_matches_viem() -> None:
    message = siwe_message(
        domain="127.0.0.1:8787",
        uri="http://127.0.0.1:8787",
        address="0x70997970c51812dc3a010c7d01b50e0d17dc79c8",
        chain_id=31337,
        nonce="abcdEFGH1234",
        issued_at=datetime(2026, 11, 30, 16, 40, 29, 123000, tzinfo=UTC),
    )
    assert message == VIEM


def test_signature_recovers_the_signer() -> None:
    account = Account.create()
    signature = sign_message(account, VIEM)
    assert signature.startswith("0x") and len(signature) == 132
    assert Account.recover_message(encode_defunct(text=VIEM), signature=signature) == account.address
