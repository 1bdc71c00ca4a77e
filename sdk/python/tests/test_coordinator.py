"""The client against a real coordinator (`sharedllm up`, conftest.py): a dev wallet buys credits
on the dev chain, signs in, makes a key, chats through the OpenAI client the SDK hands back, sees
the charge its usage costs, revokes the key and is refused; errors arrive OpenAI-shaped."""

from __future__ import annotations

import openai
import pytest
from conftest import System
from devchain import buy_credits, dev_wallet

from sharedllm import SharedLLM, SharedLLMError

DEPOSIT = 100_000


def test_views(system: System) -> None:
    with SharedLLM(system.url) as sl:
        health = sl.health()
        assert health.status == "ok" and health.credits and system.model in health.models

        ledger = sl.ledger()
        # the coordinator's default price: 1 credit per prompt token, 2 per completion token
        assert (ledger.default_price.prompt, ledger.default_price.completion) == (1, 2)
        assert ledger.cost(system.model, 10, 5) == 20

        network = sl.network()
        online = [n for n in network.nodes if n.status == "online"]
        assert len(online) == 1 and online[0].models == [system.model] and online[0].accepting
        assert network.totals.online == 1
        assert [(m.id, m.nodes) for m in network.models] == [(system.model, 1)]

        earnings = sl.earnings(online[0].id)
        assert isinstance(earnings.earned, int) and earnings.chain_id == ledger.chain_id

        federation = sl.federation()
        # `up --federation` on a fresh dev chain: this site is not in the registry, it has no peers
        assert federation.site.status == "unregistered" and federation.peers == []
        assert federation.chain_id == ledger.chain_id and federation.forwarding.outbound


def test_sign_in_key_chat_charge_revoke(system: System) -> None:
    wallet = dev_wallet(7)
    with SharedLLM(system.url) as sl:
        ledger = sl.ledger()
        buy_credits(system.chain_rpc_url, ledger.ledger, ledger.coordinator, wallet, DEPOSIT)

        session = sl.sign_in(wallet)
        assert session.token.startswith("sess_") and session.address == wallet.address
        assert sl.session_address() == wallet.address
        before = sl.account()
        assert (before.deposited, before.charged, before.held, before.available) == (DEPOSIT, 0, 0, DEPOSIT)

        key = sl.create_key("pysdk", policy="site_only")
        assert key.key.startswith("sk-") and key.owner == wallet.address and key.policy == "site_only"

        chat = sl.openai(key.key, max_retries=0, timeout=120).chat.completions.create(
            model=system.model,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=8,
            temperature=0,
        )
        assert chat.choices[0].message.content
        usage = chat.usage
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        cost = ledger.cost(system.model, usage.prompt_tokens, usage.completion_tokens)
        assert cost == usage.prompt_tokens + 2 * usage.completion_tokens

        after = sl.account()
        assert (after.charged, after.held, after.available) == (cost, 0, DEPOSIT - cost)
        # a wallet-bound key reads its owner's account too
        with SharedLLM(system.url, api_key=key.key) as by_key:
            assert by_key.account() == after

        [listed] = [k for k in sl.list_keys() if k.id == key.id]
        assert listed.name == "pysdk" and listed.revoked_at is None
        assert (listed.usage.requests, listed.usage.prompt_tokens, listed.usage.completion_tokens, listed.usage.credits) == (
            1,
            usage.prompt_tokens,
            usage.completion_tokens,
            cost,
        )

        sl.revoke_key(key.id)
        [listed] = [k for k in sl.list_keys() if k.id == key.id]
        assert listed.revoked_at is not None
        with pytest.raises(openai.AuthenticationError) as refused:
            sl.openai(key.key, max_retries=0).chat.completions.create(
                model=system.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
            )
        assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
        with pytest.raises(SharedLLMError) as again:
            sl.revoke_key(key.id)
        assert (again.value.status, again.value.code) == (404, "not_found")

        sl.sign_out()
        assert sl.session is None


def test_errors_are_openai_shaped(system: System) -> None:
    with SharedLLM(system.url, api_key="sk-not-a-key") as sl:
        with pytest.raises(SharedLLMError) as bad_key:
            sl.account()
        e = bad_key.value
        assert (e.status, e.code, e.type) == (401, "invalid_api_key", "authentication_error")
        assert e.message and "invalid_api_key" in str(e)

        with pytest.raises(SharedLLMError) as no_session:
            sl.create_key("no session")
        assert (no_session.value.status, no_session.value.code) == (401, "missing_api_key")

        # a wallet with nothing in escrow signs in and gets a key, and is refused for credits
        sl.sign_in(dev_wallet(8))
        with pytest.raises(SharedLLMError) as bad_policy:
            sl.create_key("x", policy="everywhere")  # type: ignore[arg-type]
        assert (bad_policy.value.status, bad_policy.value.code, bad_policy.value.type) == (400, "invalid_request", "invalid_request_error")
        key = sl.create_key("broke")
        with pytest.raises(openai.APIStatusError) as broke:
            sl.openai(key.key, max_retries=0).chat.completions.create(
                model=system.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
        assert broke.value.status_code == 402 and broke.value.code == "insufficient_credits"

        with pytest.raises(SharedLLMError) as missing:
            sl.earnings("not-an-address")
        assert (missing.value.status, missing.value.code, missing.value.param) == (400, "invalid_request", "address")

    with SharedLLM("http://127.0.0.1:9", timeout=2) as nowhere:
        with pytest.raises(SharedLLMError) as unreachable:
            nowhere.health()
        assert unreachable.value.status is None and unreachable.value.code == "unreachable"
