"""SQLite data versions: every commit changes them, from this process or another; the thread
pools behind the store deliver results, errors and shut-downs; shared probes never answer a
caller with a check that began before it asked."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fhir_gateway.errors import StoreError
from fhir_gateway.store import MongoStore, SQLiteStore
from fhir_gateway.store.data_version import DataVersioned
from fhir_gateway.store.sqlite_threads import ConnectionThreads, ProbeRun, SharedProbe
from tests.store import resources as fx
from tests.store.conftest import make_mongo_store

# Runs in a child process: one more Observation in the same file, committed there.
WRITE_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from pathlib import Path
from fhir_gateway.store import SQLiteStore
from tests.store import resources as fx

async def main() -> None:
    store = SQLiteStore(Path(sys.argv[1]))
    await store.open()
    await store.upsert([fx.weight("from-elsewhere", "p1", "2024-05-03", 71)])
    await store.close()

asyncio.run(main())
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    yield store
    await store.close()


def test_only_the_sqlite_store_offers_data_versions(tmp_path: Path) -> None:
    assert isinstance(SQLiteStore(tmp_path / "x.sqlite3"), DataVersioned)
    assert not isinstance(make_mongo_store(), DataVersioned)
    assert not hasattr(MongoStore, "data_version")


async def test_reads_leave_the_version_alone(store: SQLiteStore) -> None:
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    before = await store.data_version()
    await store.read("Observation", "w1")
    await store.get_record("cursor", "u1")
    assert await store.data_version() == before


async def test_every_write_of_this_store_changes_the_version(store: SQLiteStore) -> None:
    first = await store.data_version()
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    second = await store.data_version()
    await store.delete("Observation", "w1")
    third = await store.data_version()
    await store.put_record("cursor", "u1", {"lastupdate": 1})
    fourth = await store.data_version()
    assert len({first, second, third, fourth}) == 4


async def test_an_unchanged_upsert_commits_nothing_new_to_see(store: SQLiteStore) -> None:
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    before = await store.data_version()
    result = await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    assert result.unchanged == 1
    # An empty write transaction may or may not bump the version; what matters is that a real
    # change always does (previous test). A spurious change only costs a cache miss.
    after_change = await store.upsert([fx.weight("w1", "p1", "2024-05-01", 72)])
    assert after_change.updated == 1
    assert await store.data_version() != before


async def test_a_commit_on_another_connection_changes_the_version(
    store: SQLiteStore, tmp_path: Path
) -> None:
    before = await store.data_version()
    other = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
    try:
        other.execute("INSERT INTO records VALUES ('cursor', 'u9', 1, '{}')")
    finally:
        other.close()
    assert await store.data_version() != before


async def test_a_commit_in_another_process_changes_the_version(
    store: SQLiteStore, tmp_path: Path
) -> None:
    before = await store.data_version()
    subprocess.run(
        [sys.executable, "-c", WRITE_FROM_ANOTHER_PROCESS, str(tmp_path / "store.sqlite3")],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert await store.data_version() != before
    assert await store.read("Observation", "from-elsewhere") is not None


async def test_a_reopened_store_never_repeats_an_old_version(tmp_path: Path) -> None:
    seen: set[int] = set()
    for _ in range(3):
        store = SQLiteStore(tmp_path / "store.sqlite3")
        await store.open()
        seen.add(await store.data_version())
        await store.close()
    assert len(seen) == 3


async def test_closed_store_has_no_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.data_version()


async def test_concurrent_version_checks_agree_and_see_a_prior_commit(
    store: SQLiteStore,
) -> None:
    before = await store.data_version()
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    versions = await asyncio.gather(*(store.data_version() for _ in range(50)))
    assert set(versions) == {versions[0]} and versions[0] != before


# ---------------------------------------------------------------- SharedProbe


class ManualProbe:
    """A probe whose runs the test starts and finishes by hand."""

    def __init__(self) -> None:
        self.runs: list[tuple[ProbeRun, asyncio.Future[int]]] = []

    def __call__(self, run: ProbeRun) -> asyncio.Future[int]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.runs.append((run, done))
        return done

    def start(self, index: int) -> None:
        self.runs[index][0].started = True  # what the worker does before it reads

    def finish(self, index: int, version: int) -> None:
        self.runs[index][1].set_result(version)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_join_a_run_until_it_starts_reading_then_queue_the_next() -> None:
    probe = ManualProbe()
    shared = SharedProbe(probe)
    early = [asyncio.ensure_future(shared()) for _ in range(3)]
    await settle()
    assert len(probe.runs) == 1  # all three share the queued run
    probe.start(0)
    late = [asyncio.ensure_future(shared()) for _ in range(2)]
    await settle()
    assert len(probe.runs) == 2  # the first run began reading before they asked

    probe.finish(0, 1)  # "the version before a commit the late callers may follow"
    await settle()
    assert [caller.result() for caller in early] == [1, 1, 1]
    assert not any(caller.done() for caller in late)

    probe.start(1)
    probe.finish(1, 2)
    await settle()
    assert [caller.result() for caller in late] == [2, 2]
    assert len(probe.runs) == 2


async def test_a_failed_run_fails_its_callers_with_a_store_error_each() -> None:
    probe = ManualProbe()
    shared = SharedProbe(probe)
    callers = [asyncio.ensure_future(shared()) for _ in range(2)]
    await settle()
    probe.start(0)
    probe.runs[0][1].set_exception(sqlite3.OperationalError("disk I/O error"))
    await settle()
    errors = [caller.exception() for caller in callers]
    assert all(isinstance(error, StoreError) for error in errors)
    assert errors[0] is not errors[1]
    # The probe recovers: the next caller gets a fresh run.
    again = asyncio.ensure_future(shared())
    await settle()
    probe.finish(1, 7)
    assert await again == 7


async def test_a_cancelled_caller_does_not_stop_the_others() -> None:
    probe = ManualProbe()
    shared = SharedProbe(probe)
    leaving, staying = asyncio.ensure_future(shared()), asyncio.ensure_future(shared())
    await settle()
    leaving.cancel()
    probe.finish(0, 3)
    await settle()
    assert leaving.cancelled() and staying.result() == 3


# ---------------------------------------------------------------- ConnectionThreads


def _double(connection: sqlite3.Connection, number: int) -> int:
    return int(connection.execute("SELECT ? * 2", (number,)).fetchone()[0])


def _fail(connection: sqlite3.Connection, sql: str) -> None:
    connection.execute(sql)


async def test_threads_return_results_and_errors(tmp_path: Path) -> None:
    threads = ConnectionThreads("test", 2, lambda: sqlite3.connect(tmp_path / "t.sqlite3"))
    try:
        assert await asyncio.gather(*(threads.submit(_double, n) for n in range(20))) == [
            n * 2 for n in range(20)
        ]
        with pytest.raises(sqlite3.OperationalError):
            await threads.submit(_fail, "SELECT * FROM no_such_table")
        assert await threads.submit(_double, 21) == 42  # a failure does not kill the thread
    finally:
        await threads.shutdown()
    with pytest.raises(StoreError):
        threads.submit(_double, 1)


async def test_shutdown_finishes_queued_work_first(tmp_path: Path) -> None:
    threads = ConnectionThreads("test", 1, lambda: sqlite3.connect(tmp_path / "t.sqlite3"))
    queued = [threads.submit(_double, n) for n in range(10)]
    await threads.shutdown()
    assert [await result for result in queued] == [n * 2 for n in range(10)]


async def test_a_connection_that_cannot_open_fails_the_call_not_the_thread(
    tmp_path: Path,
) -> None:
    target = tmp_path / "later" / "t.sqlite3"
    threads = ConnectionThreads("test", 1, lambda: sqlite3.connect(target))
    try:
        with pytest.raises(sqlite3.OperationalError):
            await threads.submit(_double, 1)
        target.parent.mkdir()
        assert await threads.submit(_double, 2) == 4
    finally:
        await threads.shutdown()
