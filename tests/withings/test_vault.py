from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fhir_gateway.errors import GatewayError, VersionConflict
from fhir_gateway.withings.keys import generate_key, parse_keys
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.vault import (
    TOKENS_KIND,
    TokenTampered,
    TokenUndecryptable,
    TokenVault,
    UserTokenStatus,
)
from tests.withings.memory_store import STORE_KINDS, HookedStore, open_store

KEY = generate_key()


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with open_store(request.param, tmp_path) as opened:
        yield opened


def tokens(userid: str, n: int = 0, *, expires_at: float = 1_700_010_800.0) -> TokenSet:
    return TokenSet(
        userid=userid,
        access_token=f"access-secret-{userid}-{n}",
        refresh_token=f"refresh-secret-{userid}-{n}",
        expires_at=expires_at,
        scope="user.info,user.metrics",
    )


def vault_for(store: Any, keys: str = KEY) -> TokenVault:
    return TokenVault(store, parse_keys(keys), clock=lambda: 1_700_000_000.0)


async def test_save_and_load_round_trip(store: Any) -> None:
    vault = vault_for(store)
    version = await vault.save(tokens("42"), expected_version=0)
    loaded = await vault.load("42")
    assert loaded is not None
    assert loaded.tokens == tokens("42")
    assert loaded.version == version == 1
    assert loaded.status == "active"
    assert loaded.issued_at == 1_700_000_000.0
    assert await vault.load("unknown") is None


async def test_record_holds_no_token_in_clear(store: Any) -> None:
    await vault_for(store).save(tokens("42"), expected_version=0)
    record = await store.get_record(TOKENS_KIND, "42")
    assert record is not None
    assert set(record.data) == {
        "ciphertext",
        "expires_at",
        "scope",
        "status",
        "needs_reauth_reason",
        "updated_at",
    }
    assert record.data["ciphertext"].startswith("gAAAA")  # the Fernet token format
    assert "secret" not in str(record.data)
    assert record.data["status"] == "active"
    assert record.data["expires_at"] == 1_700_010_800.0


async def test_save_is_compare_and_set(store: Any) -> None:
    vault = vault_for(store)
    assert await vault.save(tokens("42", 0), expected_version=0) == 1
    with pytest.raises(VersionConflict):
        await vault.save(tokens("42", 1), expected_version=0)
    assert await vault.save(tokens("42", 1), expected_version=1) == 2
    with pytest.raises(VersionConflict):
        await vault.save(tokens("42", 2), expected_version=1)  # a stale writer loses
    loaded = await vault.load("42")
    assert loaded is not None and loaded.tokens == tokens("42", 1)


async def test_a_ciphertext_moved_to_another_user_is_rejected(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("alice"), expected_version=0)
    await vault.save(tokens("mallory"), expected_version=0)
    alice = await store.get_record(TOKENS_KIND, "alice")
    mallory = await store.get_record(TOKENS_KIND, "mallory")
    await store.put_record(
        TOKENS_KIND,
        "mallory",
        {**mallory.data, "ciphertext": alice.data["ciphertext"]},
        expected_version=mallory.version,
    )
    with pytest.raises(TokenTampered) as raised:
        await vault.load("mallory")
    assert isinstance(raised.value, GatewayError)
    assert "secret" not in str(raised.value)
    # The rightful owner still reads hers.
    alice_tokens = await vault.load("alice")
    assert alice_tokens is not None and alice_tokens.tokens == tokens("alice")


async def test_a_forged_ciphertext_is_undecryptable(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("42"), expected_version=0)
    record = await store.get_record(TOKENS_KIND, "42")
    flipped = record.data["ciphertext"][:-5] + (
        "A" if record.data["ciphertext"][-5] != "A" else "B"
    )
    flipped += record.data["ciphertext"][-4:]
    await store.put_record(TOKENS_KIND, "42", {**record.data, "ciphertext": flipped})
    with pytest.raises(TokenUndecryptable, match="user 42"):
        await vault.load("42")


async def test_needs_reauth_is_recorded_and_cleared_by_a_new_save(store: Any) -> None:
    vault = vault_for(store)
    version = await vault.save(tokens("42"), expected_version=0)
    assert await vault.mark_needs_reauth("42", "invalid_grant") is True
    loaded = await vault.load("42")
    assert loaded is not None
    assert (loaded.status, loaded.needs_reauth_reason) == ("needs_reauth", "invalid_grant")
    assert loaded.version == version + 1
    await vault.save(tokens("42", 1), expected_version=None)  # a new consent
    loaded = await vault.load("42")
    assert loaded is not None and (loaded.status, loaded.needs_reauth_reason) == ("active", None)
    assert await vault.mark_needs_reauth("nobody", "invalid_grant") is False


async def test_needs_reauth_with_a_stale_version_does_not_flag(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("42", 0), expected_version=0)
    await vault.save(tokens("42", 1), expected_version=1)  # a refresh landed meanwhile
    with pytest.raises(VersionConflict):
        await vault.mark_needs_reauth("42", "invalid_grant", expected_version=1)
    loaded = await vault.load("42")
    assert loaded is not None and loaded.status == "active"


async def test_list_users_needs_no_key_and_shows_no_secret(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("1", expires_at=100.0), expected_version=0)
    await vault.save(tokens("2", expires_at=200.0), expected_version=0)
    await vault.mark_needs_reauth("2", "invalid_grant")
    # A vault holding an unrelated key can still list: listing never decrypts.
    users = await vault_for(store, generate_key()).list_users()
    assert sorted(users, key=lambda user: user.userid) == [
        UserTokenStatus("1", "active", 100.0, "user.info,user.metrics", None),
        UserTokenStatus("2", "needs_reauth", 200.0, "user.info,user.metrics", "invalid_grant"),
    ]
    assert [user.userid for user in await vault.list_users(status="needs_reauth")] == ["2"]
    assert "secret" not in repr(users)


async def test_delete(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("42"), expected_version=0)
    assert await vault.delete("42") is True
    assert await vault.load("42") is None
    assert await vault.delete("42") is False


async def test_key_rotation_reencrypts_so_the_old_key_can_be_removed(store: Any) -> None:
    old, new = generate_key(), generate_key()
    before = vault_for(store, old)
    for userid in range(200):
        await before.save(tokens(str(userid)), expected_version=0)
    await before.mark_needs_reauth("7", "invalid_grant")

    rotating = vault_for(store, f"{new},{old}")
    assert await rotating.rotate_keys() == 200

    after = vault_for(store, new)  # the old key is gone
    for userid in range(200):
        loaded = await after.load(str(userid))
        assert loaded is not None and loaded.tokens == tokens(str(userid))
    flagged = await after.load("7")
    assert flagged is not None and flagged.status == "needs_reauth"  # clear fields untouched
    with pytest.raises(TokenUndecryptable):
        await vault_for(store, old).load("0")  # nothing is left under the old key


async def test_rotation_never_overwrites_a_concurrent_refresh(store: Any) -> None:
    old, new = generate_key(), generate_key()
    await vault_for(store, old).save(tokens("42", 0), expected_version=0)
    hooked = HookedStore(store)
    rotating = vault_for(hooked, f"{new},{old}")
    refresher = vault_for(store, old)  # a worker not yet restarted with the new key list

    async def refresh_lands_first(kind: str, key: str) -> None:
        # Between the rotation's read and its write, a refresh saves a newer pair.
        hooked.before_put = None
        await refresher.save(tokens("42", 1), expected_version=1)

    hooked.before_put = refresh_lands_first
    assert await rotating.rotate_keys() == 1
    loaded = await vault_for(store, new).load("42")
    assert loaded is not None
    assert loaded.tokens == tokens("42", 1)  # the refresh survived and was rotated too
    assert loaded.version == 3


async def test_rotation_reports_records_no_key_opens(store: Any) -> None:
    lost, new = generate_key(), generate_key()
    await vault_for(store, lost).save(tokens("orphan"), expected_version=0)
    await vault_for(store, new).save(tokens("fine"), expected_version=0)
    with pytest.raises(
        TokenUndecryptable, match=r"1 withings token records.*orphan.*1 were rotated"
    ):
        await vault_for(store, new).rotate_keys()


async def test_concurrent_saves_at_one_version_have_exactly_one_winner(store: Any) -> None:
    vault = vault_for(store)
    await vault.save(tokens("42", 0), expected_version=0)
    outcomes = await asyncio.gather(
        *(vault.save(tokens("42", n), expected_version=1) for n in range(1, 21)),
        return_exceptions=True,
    )
    winners = [outcome for outcome in outcomes if outcome == 2]
    assert len(winners) == 1
    assert all(isinstance(o, VersionConflict) for o in outcomes if o != 2)


async def test_no_token_value_in_logs_reprs_or_errors(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    vault = vault_for(store)
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        await vault.save(tokens("42"), expected_version=0)
        loaded = await vault.load("42")
        await vault.mark_needs_reauth("42", "invalid_grant")
        await vault.rotate_keys()
        seen += [repr(loaded), str(loaded), repr(vault), repr(await vault.list_users())]
        try:
            await vault.save(tokens("42"), expected_version=0)
        except VersionConflict as conflict:
            seen.append(str(conflict))
    text = caplog.text + "".join(seen)
    assert "access-secret" not in text and "refresh-secret" not in text
    assert KEY not in text
