"""Bearer tokens: scopes, minting rules, hashing, and the authentication cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_gateway.errors import InvalidRequest, Unauthorized
from fhir_gateway.fhir.access import (
    ACCESS_TOKEN_KIND,
    Scope,
    StoreTokenAuthenticator,
    create_access_token,
    token_digest,
)
from fhir_gateway.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("text", "resource_type", "readable"),
    [
        ("system/*.rs", "Observation", True),
        ("system/*.read", "Device", True),
        ("patient/Observation.rs", "Observation", True),
        ("patient/Observation.rs", "Device", False),
        ("system/*.c", "Observation", False),
        ("user/*.cruds", "Patient", True),
        ("system/*.*", "Patient", True),
    ],
)
def test_scopes(text: str, resource_type: str, readable: bool) -> None:
    scope = Scope.parse(text)
    assert (scope.can_read and scope.resource_type in {"*", resource_type}) is readable


@pytest.mark.parametrize("text", ["everything", "system/*", "launch/patient", "system/obs.rs"])
def test_unknown_scopes_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest):
        Scope.parse(text)


async def test_tokens_are_stored_only_as_digests(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        token = await create_access_token(store, patient_id="alice")
        records = await store.list_records(ACCESS_TOKEN_KIND)
        assert [r.key for r in records] == [token_digest(token)]
        assert token not in repr(records)
        assert records[0].data["scope"] == "patient/*.rs"
        with pytest.raises(InvalidRequest):
            await create_access_token(store, patient_id="alice", scope="system/*.rs")
        with pytest.raises(InvalidRequest):
            await create_access_token(store, scope="patient/*.rs")
    finally:
        await store.close()


async def test_revocation_takes_effect_when_the_cache_expires(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    try:
        now = [1000.0]
        authenticator = StoreTokenAuthenticator(store, cache_seconds=30, clock=lambda: now[0])
        token = await create_access_token(store)
        context = await authenticator.authenticate(f"Bearer {token}")
        assert context.patient_id is None and context.can_read("Observation")
        record = await store.get_record(ACCESS_TOKEN_KIND, token_digest(token))
        assert record is not None
        await store.put_record(ACCESS_TOKEN_KIND, record.key, {**record.data, "revoked": True})
        now[0] += 10
        assert await authenticator.authenticate(f"Bearer {token}") == context  # cached
        now[0] += 30
        with pytest.raises(Unauthorized):
            await authenticator.authenticate(f"Bearer {token}")
    finally:
        await store.close()
