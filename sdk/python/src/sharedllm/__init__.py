"""Python client for a SharedLLM coordinator."""

from .client import SharedLLM
from .errors import SharedLLMError
from .siwe import siwe_message
from .types import (
    KEY_POLICIES,
    Account,
    ApiKey,
    Earnings,
    Federation,
    FederationPeer,
    FederationSelf,
    Forwarding,
    Health,
    KeyPolicy,
    KeyUsage,
    Ledger,
    Network,
    NetworkModel,
    NetworkNode,
    NetworkTotals,
    NewApiKey,
    Nonce,
    Session,
    TokenPrice,
)

__all__ = [
    "KEY_POLICIES",
    "Account",
    "ApiKey",
    "Earnings",
    "Federation",
    "FederationPeer",
    "FederationSelf",
    "Forwarding",
    "Health",
    "KeyPolicy",
    "KeyUsage",
    "Ledger",
    "Network",
    "NetworkModel",
    "NetworkNode",
    "NetworkTotals",
    "NewApiKey",
    "Nonce",
    "Session",
    "SharedLLM",
    "SharedLLMError",
    "TokenPrice",
    "siwe_message",
]
