"""`fhir-gateway keys|users|sync`: what the operator sees, and that it holds no secret."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fhir_gateway import admin, cli
from fhir_gateway.config import Settings
from fhir_gateway.ingest.reports import SyncProgress
from fhir_gateway.services import ServiceOverrides
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings.keys import generate_key, parse_keys
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.vault import TokenVault
from tests.ingest.harness import running_gateway, unseeded_user, weight_group


def _env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, key: str) -> None:
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("ENCRYPTION_KEY", key)
    for name in ("MONGODB_URL", "REDIS_URL", "SANDBOX", "WITHINGS_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)


def test_keys_generate_prints_only_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "generate"]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(printed) == 44
    parse_keys(printed)  # a valid Fernet key, or this raises


async def test_keys_rotate_re_encrypts_under_the_first_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = generate_key(), generate_key()
    settings = Settings(data_dir=tmp_path, encryption_key=old)
    store = make_store(settings)
    await store.open()
    tokens = TokenSet("363", "access-value", "refresh-value", 1e10, "user.metrics")
    await TokenVault(store, parse_keys(old)).save(tokens, expected_version=0)
    await store.close()

    _env(monkeypatch, tmp_path, f"{new},{old}")
    assert await asyncio.to_thread(cli.main, ["keys", "rotate"]) == 0
    assert "re-encrypted 1 " in capsys.readouterr().out

    await store.open()
    stored = await TokenVault(store, parse_keys(new)).load("363")  # the old key is gone
    await store.close()
    assert stored is not None and stored.tokens.refresh_token == "refresh-value"


async def test_users_without_any_connection_says_how_to_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, tmp_path, generate_key())
    assert await asyncio.to_thread(cli.main, ["users"]) == 0
    assert "/auth/withings" in capsys.readouterr().out


def test_the_progress_line_shows_users_pages_and_resources() -> None:
    line = cli.progress_line(SyncProgress("363", 1, 4, 3, 120), width=8)
    assert line == "[##......] 1/4 users · 3 pages, 120 resources (user 363)"


async def test_admin_sync_reports_progress_per_page_and_per_user(tmp_path: Path) -> None:
    async with running_gateway(tmp_path / "gateway", measure_page_size=1) as gateway:
        taken = int(gateway.clock()) - 3600
        userid = unseeded_user(gateway.sandbox, [])
        await gateway.connect(userid)
        for grpid in (1, 2, 3):
            gateway.sandbox.add_measure_group(userid, weight_group(70_000, taken, grpid=grpid))
        seen: list[SyncProgress] = []
        overrides = ServiceOverrides(withings=gateway.services.withings, clock=gateway.clock)
        report = await admin.sync(
            gateway.settings, progress=seen.append, store=gateway.store, overrides=overrides
        )
        assert [user.created for user in report.users] == [3]
        assert seen[-1] == SyncProgress(userid, 1, 1, report.users[0].pages, 4)
        # The Patient counts first, then one weight per page.
        assert [p.resources for p in seen if p.users_done == 0][:3] == [2, 3, 4]
        rows = await admin.list_users(gateway.settings, store=gateway.store)
        assert [(row.userid, row.status, row.measures_lastupdate) for row in rows] == [
            (userid, "active", taken)
        ]
