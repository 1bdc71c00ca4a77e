"""SharedLLM: a typed client for a coordinator's own endpoints (sign-in, keys, account, network,
federation), and a configured OpenAI client for its OpenAI-compatible ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import httpx
from eth_account import Account as EthAccount
from eth_account.signers.local import LocalAccount

from .errors import SharedLLMError
from .siwe import STATEMENT, sign_message, siwe_message
from .types import (
    Account,
    ApiKey,
    Earnings,
    Federation,
    Health,
    KeyPolicy,
    Ledger,
    Network,
    NewApiKey,
    Nonce,
    Session,
)

if TYPE_CHECKING:
    import openai


class SharedLLM:
    """A client for one coordinator.

    Credentials: ``session`` (a wallet's session token from :meth:`sign_in`) for the wallet's own
    endpoints (keys, account), and ``api_key`` for :meth:`openai` (and the account view, which a
    wallet-bound key may read too).

    Example::

        from eth_account import Account
        from sharedllm import SharedLLM

        with SharedLLM("http://127.0.0.1:8787") as sl:
            sl.sign_in(Account.from_key(PRIVATE_KEY))
            key = sl.create_key("laptop", policy="site_only")
            chat = sl.openai(key.key).chat.completions.create(
                model="...", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
            )
            print(sl.account().available)
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the coordinator URL must be http(s)://host[:port], not {base_url!r}")
        #: the coordinator's origin, e.g. http://127.0.0.1:8787 (a trailing /v1 is dropped)
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self.session = session
        self.api_key = api_key
        self._http = http_client or httpx.Client(timeout=timeout)
        self._owns_http = http_client is None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, token: str | None = None, json: Any = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            res = self._http.request(method, self.base_url + path, headers=headers, json=json)
        except httpx.TransportError as err:
            raise SharedLLMError(
                f"cannot reach {self.base_url}: {err!r}; is the coordinator running there?",
                status=None,
                code="unreachable",
                type="connection_error",
            ) from err
        if res.is_error:
            raise SharedLLMError.from_response(res)
        return res.json()

    # -- health and the chain ----------------------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: liveness, whether credits are on, nodes and models online."""
        return Health.from_json(self._request("GET", "/healthz"))

    def ledger(self) -> Ledger:
        """``GET /v1/ledger``: the chain, the CreditLedger contract and prices (404 without credits)."""
        return Ledger.from_json(self._request("GET", "/v1/ledger"))

    # -- sign-in -----------------------------------------------------------------------------

    def nonce(self) -> Nonce:
        """``GET /v1/auth/nonce``: a one-use sign-in nonce (it lasts five minutes)."""
        j = self._request("GET", "/v1/auth/nonce")
        return Nonce(nonce=j["nonce"], chain_id=int(j["chainId"]))

    def sign_in(self, account: LocalAccount | str, *, statement: str = STATEMENT) -> Session:
        """Signs in with Ethereum (EIP-4361) and keeps the session on this client.

        ``account`` is an ``eth_account`` LocalAccount or a private key (0x hex). The message names
        this client's base URL as domain and URI, so it must be one of the coordinator's public
        origins (``--public-url``), and the chain the coordinator gave with the nonce.
        """
        signer: LocalAccount = EthAccount.from_key(account) if isinstance(account, str) else account
        n = self.nonce()
        message = siwe_message(
            domain=urlsplit(self.base_url).netloc,
            uri=self.base_url,
            address=signer.address,
            chain_id=n.chain_id,
            nonce=n.nonce,
            statement=statement,
        )
        body = {"message": message, "signature": sign_message(signer, message)}
        session = Session.from_json(self._request("POST", "/v1/auth/login", json=body))
        self.session = session.token
        return session

    def session_address(self) -> str:
        """``GET /v1/auth/session``: the wallet this client's session belongs to."""
        return str(self._request("GET", "/v1/auth/session", token=self.session)["address"])

    def sign_out(self) -> None:
        """``POST /v1/auth/logout``: ends the session on the coordinator and forgets it here."""
        self._request("POST", "/v1/auth/logout", token=self.session)
        self.session = None

    # -- API keys ----------------------------------------------------------------------------

    def create_key(self, name: str, *, policy: KeyPolicy | None = None) -> NewApiKey:
        """``POST /v1/keys`` (session): a key bound to the wallet; its secret ``key`` is shown once.

        ``policy``: where its jobs may run, ``any`` (the coordinator's default), ``site_only`` or
        ``own_nodes``.
        """
        body: dict[str, Any] = {"name": name}
        if policy is not None:
            body["policy"] = policy
        return NewApiKey.from_json(self._request("POST", "/v1/keys", token=self.session, json=body))

    def list_keys(self) -> list[ApiKey]:
        """``GET /v1/keys`` (session): the wallet's keys, newest first, each with its usage."""
        return [ApiKey.from_json(k) for k in self._request("GET", "/v1/keys", token=self.session)["data"]]

    def revoke_key(self, key_id: str) -> None:
        """``DELETE /v1/keys/{id}`` (session): the key is refused from now on (404 if not an active key of this wallet)."""
        self._request("DELETE", f"/v1/keys/{key_id}", token=self.session)

    # -- views -------------------------------------------------------------------------------

    def account(self) -> Account:
        """``GET /v1/account`` (session, else a wallet-bound API key): deposited, charged, held, available."""
        return Account.from_json(self._request("GET", "/v1/account", token=self.session or self.api_key))

    def network(self) -> Network:
        """``GET /v1/network`` (public): every node this coordinator knows, and the models served."""
        return Network.from_json(self._request("GET", "/v1/network"))

    def earnings(self, address: str) -> Earnings:
        """``GET /v1/earnings/{address}`` (public): what a node earned, what is settled and claimable."""
        return Earnings.from_json(self._request("GET", f"/v1/earnings/{address}"))

    def federation(self) -> Federation:
        """``GET /v1/federation`` (public): this site in the registry and its peers (404 unless federated)."""
        return Federation.from_json(self._request("GET", "/v1/federation"))

    # -- the OpenAI endpoints ----------------------------------------------------------------

    def openai(self, api_key: str | None = None, **kwargs: Any) -> openai.OpenAI:
        """An official ``openai.OpenAI`` client for this coordinator's ``/v1`` with an API key.

        ``api_key`` defaults to this client's; other keyword arguments (``timeout``,
        ``max_retries``...) go to ``openai.OpenAI``.
        """
        import openai

        key = api_key or self.api_key
        if not key:
            raise ValueError("no API key: pass one, or create one with create_key() after sign_in()")
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, **kwargs)
