"""The CLI: tokens printed once and alone on stdout; the first-run token of `serve`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fhir_gateway import cli
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import (
    ACCESS_TOKEN_KIND,
    AccessContext,
    StoreTokenAuthenticator,
    token_digest,
)
from fhir_gateway.store.sqlite import SQLiteStore


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MONGODB_URL", "REDIS_URL", "ENCRYPTION_KEY", "BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    return tmp_path


async def _context(data_dir: Path, token: str) -> AccessContext:
    store = SQLiteStore(data_dir / "fhir-gateway.sqlite3")
    await store.open()
    try:
        return await StoreTokenAuthenticator(store).authenticate(f"Bearer {token}")
    finally:
        await store.close()


async def test_token_create_prints_only_the_token(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI runs its own event loop, so it is called from a thread.
    code = await asyncio.to_thread(cli.main, ["token", "create", "--patient", "alice"])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fgw_")
    assert "shown only once" in captured.err
    context = await _context(data_dir, lines[0])
    assert context.patient_id == "alice"


async def test_token_create_rejects_bad_scopes(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(cli.main, ["token", "create", "--scope", "everything"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "scope" in captured.err


async def test_first_run_creates_one_admin_token(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env()
    await asyncio.to_thread(cli._first_run_token, settings)
    first = capsys.readouterr().err
    token = next(word for word in first.split() if word.startswith("fgw_"))
    assert "curl" in first and settings.base_url in first
    context = await _context(data_dir, token)
    assert context.admin is True
    await asyncio.to_thread(cli._first_run_token, settings)
    assert capsys.readouterr().err == ""  # a token exists now: nothing new is minted
    store = SQLiteStore(data_dir / "fhir-gateway.sqlite3")
    await store.open()
    try:
        records = await store.list_records(ACCESS_TOKEN_KIND)
        assert [r.key for r in records] == [token_digest(token)]
    finally:
        await store.close()


def test_configuration_errors_exit_with_one_line_each(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    monkeypatch.setenv("SYNC_INTERVAL", "x")
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "create"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("configuration error:") for line in err)
