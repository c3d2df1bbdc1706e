from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fhir_gateway.errors import InvalidRequest
from fhir_gateway.withings.oauth_state import (
    USED_STATE_KIND,
    InvalidState,
    StateSigner,
    load_or_create_secret,
)
from tests.withings.fake_token_endpoint import ManualClock
from tests.withings.memory_store import STORE_KINDS, open_store

SECRET = b"s" * 32
URL_SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_issue_then_consume_returns_the_payload(store: Any, clock: ManualClock) -> None:
    signer = StateSigner(SECRET, store, clock)
    state = signer.issue({"return_to": "/patients", "patient": "p1"})
    assert set(state) <= URL_SAFE
    assert await signer.consume(state) == {"return_to": "/patients", "patient": "p1"}
    assert await StateSigner(SECRET, store, clock).consume(signer.issue()) == {}


async def test_each_state_is_unique(store: Any, clock: ManualClock) -> None:
    signer = StateSigner(SECRET, store, clock)
    assert len({signer.issue() for _ in range(100)}) == 100


async def test_reuse_is_rejected(store: Any, clock: ManualClock) -> None:
    signer = StateSigner(SECRET, store, clock)
    state = signer.issue()
    await signer.consume(state)
    with pytest.raises(InvalidState) as raised:
        await signer.consume(state)
    assert raised.value.problem == "reused"
    assert isinstance(raised.value, InvalidRequest) and raised.value.status == 400


async def test_two_callbacks_racing_with_one_state_have_one_winner(
    store: Any, clock: ManualClock
) -> None:
    signer = StateSigner(SECRET, store, clock)
    state = signer.issue({"n": 1})
    outcomes = await asyncio.gather(
        *(signer.consume(state) for _ in range(10)), return_exceptions=True
    )
    assert outcomes.count({"n": 1}) == 1
    assert all(
        isinstance(o, InvalidState) and o.problem == "reused" for o in outcomes if o != {"n": 1}
    )


async def test_expired_state_is_rejected(store: Any, clock: ManualClock) -> None:
    signer = StateSigner(SECRET, store, clock)
    state = signer.issue(ttl=600)
    clock.advance(599)
    fresh = signer.issue(ttl=600)
    clock.advance(1)
    with pytest.raises(InvalidState) as raised:
        await signer.consume(state)
    assert raised.value.problem == "expired"
    assert await signer.consume(fresh) == {}


def _resign_body(state: str, change: dict[str, Any]) -> str:
    encoded, _, mac = state.partition(".")
    body = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    body.update(change)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda s: _resign_body(s, {"exp": 9_999_999_999}), id="extended-expiry"),
        pytest.param(lambda s: _resign_body(s, {"p": {"patient": "other"}}), id="changed-payload"),
        pytest.param(lambda s: _resign_body(s, {"n": "another-nonce"}), id="changed-nonce"),
        pytest.param(lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"), id="changed-mac"),
    ],
)
async def test_tampering_is_rejected(store: Any, clock: ManualClock, tamper: Any) -> None:
    signer = StateSigner(SECRET, store, clock)
    state = signer.issue({"patient": "p1"})
    with pytest.raises(InvalidState) as raised:
        await signer.consume(tamper(state))
    assert raised.value.problem == "signature"
    assert await store.list_records(USED_STATE_KIND) == []  # nothing recorded for forgeries
    assert await signer.consume(state) == {"patient": "p1"}


async def test_state_from_another_secret_is_rejected(store: Any, clock: ManualClock) -> None:
    foreign = StateSigner(b"x" * 32, store, clock).issue()
    with pytest.raises(InvalidState, match="signature"):
        await StateSigner(SECRET, store, clock).consume(foreign)


@pytest.mark.parametrize("garbage", ["", ".", "abc", "abc.", ".abc", "a.b.c", "é.é", "!!!.???"])
async def test_malformed_state_is_rejected(store: Any, clock: ManualClock, garbage: str) -> None:
    with pytest.raises(InvalidState):
        await StateSigner(SECRET, store, clock).consume(garbage)


async def test_purge_forgets_only_expired_nonces(store: Any, clock: ManualClock) -> None:
    signer = StateSigner(SECRET, store, clock)
    await signer.consume(signer.issue(ttl=60))
    await signer.consume(signer.issue(ttl=3600))
    clock.advance(120)
    assert await signer.purge_used() == 1
    assert len(await store.list_records(USED_STATE_KIND)) == 1


async def test_secret_is_created_once_and_shared(store: Any) -> None:
    secrets = await asyncio.gather(
        *(load_or_create_secret(store, "oauth-state") for _ in range(10))
    )
    assert len(set(secrets)) == 1
    assert len(secrets[0]) == 32
    assert await load_or_create_secret(store, "oauth-state") == secrets[0]
    assert await load_or_create_secret(store, "other") != secrets[0]


async def test_signers_in_two_processes_agree(store: Any, clock: ManualClock) -> None:
    issuing = StateSigner(await load_or_create_secret(store, "oauth-state"), store, clock)
    consuming = StateSigner(await load_or_create_secret(store, "oauth-state"), store, clock)
    assert await consuming.consume(issuing.issue({"k": "v"})) == {"k": "v"}


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="128 bits"):
        StateSigner(b"short", None, ManualClock())  # type: ignore[arg-type]


def test_repr_hides_the_secret() -> None:
    assert "sss" not in repr(StateSigner(SECRET, None, ManualClock()))  # type: ignore[arg-type]
