"""`fhir-gateway worker` and `fhir-gateway jobs`: a real arq worker process on a real Redis,
and the operator's view of what it gave up on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_gateway import cli
from fhir_gateway.config import Settings
from fhir_gateway.errors import WithingsTransient
from fhir_gateway.jobs.inbox import Notification, record_notification
from fhir_gateway.jobs.queue import list_dead_letters, record_dead_letter
from fhir_gateway.jobs.worker import RedisJobClient
from fhir_gateway.store.factory import SQLITE_FILENAME
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.withings.keys import generate_key
from tests.redis_server import RedisServer, run_redis_server

CLI = Path(sys.executable).with_name("fhir-gateway")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MONGODB_URL", "REDIS_URL", "BASE_URL", "SANDBOX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ENCRYPTION_KEY", generate_key())
    return tmp_path


def test_worker_without_redis_refuses_in_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["worker"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0]


def test_the_help_lists_every_command_once_with_a_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for command in ("serve", "token", "keys", "users", "sync", "worker", "jobs"):
        assert sum(line.split()[:1] == [command] for line in text.splitlines()) == 1
    assert "Argument handling" not in text  # no developer notes in the user's help


async def _store(data_dir: Path) -> SQLiteStore:
    store = SQLiteStore(data_dir / SQLITE_FILENAME)
    await store.open()
    return store


async def test_jobs_lists_dead_letters_and_the_inbox_backlog(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(cli.main, ["jobs"]) == 0
    empty = capsys.readouterr().out
    assert "no dead letters" in empty and "inbox backlog: 0" in empty

    store = await _store(data_dir)
    try:
        error = WithingsTransient("Withings getmeas failed with status 522 (timeout)")
        await record_dead_letter(store, job="sync_user_job", userid="4242", error=error, tries=5)
        await record_notification(store, Notification("4242", 1, 1_700_000_000, 1_700_000_100))
        await record_notification(store, Notification("4243", 16, date="2026-11-02"))
    finally:
        await store.close()
    assert await asyncio.to_thread(cli.main, ["jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 dead letters (jobs given up on):"
    assert "sync_user_job user=4242 tries=5 times=1" in lines[1]
    assert "WithingsTransient: Withings getmeas failed with status 522" in lines[1]
    assert lines[2].startswith("inbox backlog: 2 ")


async def _wait_for_dead_letter(data_dir: Path, worker: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker exited early"
        store = await _store(data_dir)
        try:
            records = await list_dead_letters(store)
        finally:
            await store.close()
        if records:
            return str(records[0].data["error_class"])
        await asyncio.sleep(0.2)
    raise AssertionError("the worker never ran the job")


async def test_the_worker_process_runs_queued_jobs_from_redis(
    data_dir: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url, "LOG_LEVEL": "WARNING"}
    log_path = data_dir / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([str(CLI), "worker"], env=env, stdout=log, stderr=log)
    try:
        # What the web process does for a notification: a sync request through Redis. The
        # user never connected, so the sync fails for good and becomes a dead letter.
        settings = Settings(data_dir=data_dir, redis_url=redis_server.url)
        store = await _store(data_dir)
        client = RedisJobClient(settings, store)
        try:
            assert await client.request_sync("4242", None)
        finally:
            await client.stop()
            await store.close()
        assert await _wait_for_dead_letter(data_dir, worker) == "NeedsReauth"
    finally:
        worker.send_signal(signal.SIGTERM)
        returncode = worker.wait(timeout=20)
    assert returncode == 0, log_path.read_text()

    assert await asyncio.to_thread(cli.main, ["jobs"]) == 0
    out = capsys.readouterr().out
    assert "sync_user_job user=4242" in out and "NeedsReauth" in out
