"""The bodies of the coordinator's own (non-OpenAI) endpoints as Python values.

They mirror protocol/src/responses.ts and protocol/src/federation.ts field for field, in
snake_case. Credits are decimal strings on the wire (JSON has no bigint) and ``int`` here, never
float; times are timezone-aware ``datetime``. Parts the portal shows as they are (a node's
capabilities, a split's members, a peer's advertised capacity) stay plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

KeyPolicy = Literal["any", "site_only", "own_nodes"]
"""Where a key's jobs may run: ``any`` (here, or a trusted peer site when no node here can take
it), ``site_only`` (never forwarded to a peer), ``own_nodes`` (only on the key owner's nodes)."""

KEY_POLICIES: tuple[KeyPolicy, ...] = ("any", "site_only", "own_nodes")


def _time(s: str) -> datetime:
    # the coordinator writes JavaScript ISO strings (2026-11-30T16:40:00.123Z); 3.11 reads the Z
    return datetime.fromisoformat(s)


def _time_or_none(s: str | None) -> datetime | None:
    return None if s is None else _time(s)


@dataclass(frozen=True)
class Health:
    """``GET /healthz``"""

    status: str
    #: whether requests are paid in credits on a chain (then ``ledger()`` says which)
    credits: bool
    nodes: int
    models: list[str]

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Health:
        return cls(status=j["status"], credits=bool(j["credits"]), nodes=int(j["nodes"]), models=list(j["models"]))


@dataclass(frozen=True)
class Nonce:
    """``GET /v1/auth/nonce``: a one-use sign-in nonce and the chain to sign in on."""

    nonce: str
    chain_id: int


@dataclass(frozen=True)
class Session:
    """``POST /v1/auth/login``: a session token for the wallet (send as ``Authorization: Bearer``)."""

    token: str
    address: str
    expires_at: datetime

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Session:
        return cls(token=j["token"], address=j["address"], expires_at=_time(j["expiresAt"]))


@dataclass(frozen=True)
class TokenPrice:
    """Credits per token."""

    prompt: int
    completion: int

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> TokenPrice:
        return cls(prompt=int(j["prompt"]), completion=int(j["completion"]))


@dataclass(frozen=True)
class Ledger:
    """``GET /v1/ledger``: the chain this coordinator settles on, and its prices."""

    chain_id: int
    #: the CreditLedger contract
    ledger: str
    #: the coordinator's own address (deposits are made in escrow for it)
    coordinator: str
    rpc_url: str
    default_price: TokenPrice
    model_prices: dict[str, TokenPrice]

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Ledger:
        return cls(
            chain_id=int(j["chainId"]),
            ledger=j["ledger"],
            coordinator=j["coordinator"],
            rpc_url=j["rpcUrl"],
            default_price=TokenPrice.from_json(j["pricing"]["default"]),
            model_prices={m: TokenPrice.from_json(p) for m, p in (j["pricing"].get("models") or {}).items()},
        )

    def price(self, model: str) -> TokenPrice:
        return self.model_prices.get(model, self.default_price)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        """What a request with this usage is charged, in credits."""
        p = self.price(model)
        return p.prompt * prompt_tokens + p.completion * completion_tokens


@dataclass(frozen=True)
class Account:
    """``GET /v1/account``: what a wallet can spend here, in credits."""

    address: str
    #: in escrow for this coordinator on chain
    deposited: int
    pending_withdrawal: int
    #: charged and already settled on chain
    settled_spent: int
    #: charged here and not yet settled on chain
    charged: int
    #: held for requests in flight
    held: int
    available: int

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Account:
        return cls(
            address=j["address"],
            deposited=int(j["deposited"]),
            pending_withdrawal=int(j["pendingWithdrawal"]),
            settled_spent=int(j["settledSpent"]),
            charged=int(j["charged"]),
            held=int(j["held"]),
            available=int(j["available"]),
        )


@dataclass(frozen=True)
class NewApiKey:
    """``POST /v1/keys``: the secret ``key`` is shown this once."""

    id: str
    name: str
    key: str
    owner: str
    policy: KeyPolicy

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> NewApiKey:
        return cls(id=j["id"], name=j["name"], key=j["key"], owner=j["owner"], policy=j["policy"])


@dataclass(frozen=True)
class KeyUsage:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    #: what its requests were charged
    credits: int


@dataclass(frozen=True)
class ApiKey:
    """One key in ``GET /v1/keys`` (never its secret)."""

    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    usage: KeyUsage

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> ApiKey:
        u = j["usage"]
        return cls(
            id=j["id"],
            name=j["name"],
            created_at=_time(j["createdAt"]),
            revoked_at=_time_or_none(j.get("revokedAt")),
            usage=KeyUsage(
                requests=int(u["requests"]),
                prompt_tokens=int(u["promptTokens"]),
                completion_tokens=int(u["completionTokens"]),
                credits=int(u["credits"]),
            ),
        )


@dataclass(frozen=True)
class NetworkNode:
    """One node in ``GET /v1/network``: online (with its last heartbeat) or offline."""

    id: str
    status: Literal["online", "offline"]
    accepting: bool
    #: why its owner lets it take no jobs now (paused, schedule, draining...); None when it takes them
    reason: str | None
    engine: str
    models: list[str]
    slots: int
    active_jobs: int
    load: float | None
    free_memory_bytes: int | None
    tokens_per_second: float | None
    capabilities: dict[str, Any] | None
    role: Literal["solo", "worker", "head"]
    cluster: list[dict[str, Any]] | None
    capacity: dict[str, Any] | None
    last_seen_at: datetime

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> NetworkNode:
        return cls(
            id=j["id"],
            status=j["status"],
            accepting=bool(j["accepting"]),
            reason=j.get("reason"),
            engine=j["engine"],
            models=list(j["models"]),
            slots=int(j["slots"]),
            active_jobs=int(j["activeJobs"]),
            load=j.get("load"),
            free_memory_bytes=j.get("freeMemoryBytes"),
            tokens_per_second=j.get("tokensPerSecond"),
            capabilities=j.get("capabilities"),
            role=j["role"],
            cluster=j.get("cluster"),
            capacity=j.get("capacity"),
            last_seen_at=_time(j["lastSeenAt"]),
        )


@dataclass(frozen=True)
class NetworkModel:
    id: str
    #: online nodes serving it
    nodes: int


@dataclass(frozen=True)
class NetworkTotals:
    online: int
    offline: int
    active_jobs: int


@dataclass(frozen=True)
class Network:
    """``GET /v1/network``: every node this coordinator knows and the models served now."""

    nodes: list[NetworkNode]
    models: list[NetworkModel]
    totals: NetworkTotals

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Network:
        t = j["totals"]
        return cls(
            nodes=[NetworkNode.from_json(n) for n in j["nodes"]],
            models=[NetworkModel(id=m["id"], nodes=int(m["nodes"])) for m in j["models"]],
            totals=NetworkTotals(online=int(t["online"]), offline=int(t["offline"]), active_jobs=int(t["activeJobs"])),
        )


@dataclass(frozen=True)
class Earnings:
    """``GET /v1/earnings/{address}``: what a node earned here, what is settled, and the proof to claim it."""

    address: str
    coordinator: str
    ledger: str
    chain_id: int
    earned: int
    #: not yet settled on chain
    pending: int
    settled: int
    claimed: int
    claimable: int
    #: set aside by the settler (never paid)
    set_aside: int
    #: the latest settlement that pays this node and its Merkle proof (batchId, cumulative, proof, root)
    claim: dict[str, Any] | None
    #: (day, credits) per day
    by_day: list[tuple[str, int]]
    served_jobs: int
    served_prompt_tokens: int
    served_completion_tokens: int
    #: the node's audit record (passed, failed, suspicion, excluded)
    audits: dict[str, Any]

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Earnings:
        s = j["served"]
        return cls(
            address=j["address"],
            coordinator=j["coordinator"],
            ledger=j["ledger"],
            chain_id=int(j["chainId"]),
            earned=int(j["earned"]),
            pending=int(j["pending"]),
            settled=int(j["settled"]),
            claimed=int(j["claimed"]),
            claimable=int(j["claimable"]),
            set_aside=int(j["setAside"]),
            claim=j.get("claim"),
            by_day=[(d["day"], int(d["credits"])) for d in j["byDay"]],
            served_jobs=int(s["jobs"]),
            served_prompt_tokens=int(s["promptTokens"]),
            served_completion_tokens=int(s["completionTokens"]),
            audits=j["audits"],
        )


RegistryStatus = Literal["unregistered", "pending", "admitted", "revoked"]


@dataclass(frozen=True)
class FederationSelf:
    """This site's own record in FederationRegistry."""

    address: str
    status: RegistryStatus
    url: str | None
    key_id: int | None
    valid_until: datetime | None
    metadata: str | None


@dataclass(frozen=True)
class FederationPeer:
    """A peer site as this site sees it now."""

    address: str
    url: str
    status: RegistryStatus
    trusted: bool
    #: admitted (by governance) or endorsed (by this site); None when not trusted
    trust_path: str | None
    #: why it is not trusted; None when trusted
    distrust: str | None
    key_id: int
    valid_until: datetime
    metadata: str
    public_key: str
    #: what it advertised last (None before its first answer, or with outbound off)
    capacity: dict[str, Any] | None
    #: jobs forwarded to it
    forwarded_out: int
    #: jobs run here for it
    forwarded_in: int
    #: credits this site accepted owing the peer for jobs it served
    credits_out: int
    #: credits the peer owes this site for jobs run here
    credits_in: int

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> FederationPeer:
        return cls(
            address=j["address"],
            url=j["url"],
            status=j["status"],
            trusted=bool(j["trusted"]),
            trust_path=j.get("trustPath"),
            distrust=j.get("distrust"),
            key_id=int(j["keyId"]),
            valid_until=_time(j["validUntil"]),
            metadata=j["metadata"],
            public_key=j["publicKey"],
            capacity=j.get("capacity"),
            forwarded_out=int(j["forwarded"]["out"]),
            forwarded_in=int(j["forwarded"]["in"]),
            credits_out=int(j["credits"]["out"]),
            credits_in=int(j["credits"]["in"]),
        )


@dataclass(frozen=True)
class Forwarding:
    #: whether this site forwards jobs to peers
    outbound: bool
    #: whether it takes jobs from them
    inbound: bool
    inbound_cap_per_peer: int | None


@dataclass(frozen=True)
class Federation:
    """``GET /v1/federation``: this site's identity in the registry and its peers (public facts only)."""

    site: FederationSelf
    registry: str
    chain_id: int
    #: how often the registry is read (ms): a revoked peer is cut off within it
    refresh_ms: int
    refreshed_at: datetime | None
    peers: list[FederationPeer]
    forwarding: Forwarding

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> Federation:
        s = j["self"]
        f = j["forwarding"]
        return cls(
            site=FederationSelf(
                address=s["address"],
                status=s["status"],
                url=s.get("url"),
                key_id=s.get("keyId"),
                valid_until=_time_or_none(s.get("validUntil")),
                metadata=s.get("metadata"),
            ),
            registry=j["registry"],
            chain_id=int(j["chainId"]),
            refresh_ms=int(j["refreshMs"]),
            refreshed_at=_time_or_none(j.get("refreshedAt")),
            peers=[FederationPeer.from_json(p) for p in j["peers"]],
            forwarding=Forwarding(
                outbound=bool(f["outbound"]),
                inbound=bool(f["inbound"]),
                inbound_cap_per_peer=f.get("inboundCapPerPeer"),
            ),
        )
