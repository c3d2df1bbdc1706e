from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from fhir_gateway.config import Settings
from fhir_gateway.errors import (
    ConfigError,
    StoreError,
    WithingsAuthError,
    WithingsInvalidGrant,
    WithingsInvalidParams,
    WithingsRateLimited,
    WithingsTransient,
)
from fhir_gateway.jobs.inbox import INBOX_KIND, Notification, mark_enqueued, record_notification
from fhir_gateway.jobs.queue import describe_dead_letter, list_dead_letters
from fhir_gateway.jobs.tasks import (
    JobTuning,
    SyncWindow,
    backoff,
    classify_failure,
    reconcile_job,
)
from fhir_gateway.jobs.worker import (
    CronFields,
    InProcessRunner,
    RedisJobClient,
    reconcile_period_guard,
    reconcile_schedule,
    worker_settings,
)
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.withings.tokens import NeedsReauth
from tests.jobs.recording_sync import RecordingSync
from tests.jobs.workers import FAST, running_workers, services
from tests.redis_server import RedisServer

W = SyncWindow


@pytest.fixture
async def runner_and_sync(
    store: SQLiteStore,
) -> AsyncIterator[tuple[InProcessRunner, RecordingSync]]:
    sync = RecordingSync()
    runner = InProcessRunner(store, sync, tuning=FAST)
    yield runner, sync
    await runner.stop()


async def burst_during_a_slow_sync(
    request_sync: object, sync: RecordingSync, requests: int = 100
) -> list[tuple[SyncWindow, float]]:
    """One request starts a slow sync; 99 more arrive while it runs. Returns (window, sent at)."""
    sent: list[tuple[SyncWindow, float]] = []

    async def send(window: SyncWindow) -> None:
        sent.append((window, time.monotonic()))
        await request_sync("7", window)  # type: ignore[operator]

    await send(W(1, 0, 10))
    await asyncio.wait_for(sync.started_event.wait(), 5)
    for i in range(1, requests):
        await send(W(1 + (i % 2) * 3, i * 100_000, i * 100_000 + 10))
        await asyncio.sleep(0.002)
    return sent


def assert_nothing_lost(sent: list[tuple[SyncWindow, float]], sync: RecordingSync) -> None:
    for window, sent_at in sent:
        assert sync.covered(window, after=sent_at), f"{window} was never served"


# ------------------------------------------------------------------------- coalescing


async def test_in_process_burst_gives_at_most_two_syncs_and_loses_nothing(
    runner_and_sync: tuple[InProcessRunner, RecordingSync],
) -> None:
    runner, sync = runner_and_sync
    sync.delay = 0.3
    sent = await burst_during_a_slow_sync(runner.request_sync, sync)
    await runner.queue.join()
    assert len(sync.runs) == 2
    assert sync.max_concurrent == 1
    assert_nothing_lost(sent, sync)
    assert (
        runner.metrics.value("fhir_gateway_jobs_total", {"job": "sync_user_job", "outcome": "ok"})
        == 2
    )


async def test_arq_burst_gives_at_most_two_syncs_and_loses_nothing(
    redis_server: RedisServer, store: SQLiteStore
) -> None:
    sync = RecordingSync(delay=0.3)
    client = RedisJobClient(Settings(redis_url=redis_server.url), store)
    try:
        async with running_workers(redis_server.url, store, sync, count=2):
            sent = await burst_during_a_slow_sync(client.request_sync, sync)
            await wait_for_idle(client, "7")
    finally:
        await client.stop()
    assert len(sync.runs) == 2
    assert sync.max_concurrent == 1
    assert_nothing_lost(sent, sync)


async def wait_for_idle(client: RedisJobClient, userid: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await client.coalescer.state(userid)
        if state.phase == "idle" and await client.redis.zcard("arq:queue") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the user never went idle")


# ------------------------------------------------------------------------- failures


async def test_windows_come_back_to_the_retry_after_a_transient_failure(
    runner_and_sync: tuple[InProcessRunner, RecordingSync],
) -> None:
    runner, sync = runner_and_sync
    sync.failures.append(WithingsTransient("Withings getmeas failed: HTTP 503"))
    await runner.request_sync("7", W(1, 100, 200))
    await runner.queue.join()
    assert [run.windows for run in sync.runs] == [(W(1, 100, 200),), (W(1, 100, 200),)]
    assert [run.ok for run in sync.runs] == [False, True]
    assert (
        runner.metrics.value(
            "fhir_gateway_jobs_total", {"job": "sync_user_job", "outcome": "retry"}
        )
        == 1
    )
    assert await list_dead_letters(runner.queue.context["store"]) == []


async def test_retries_then_a_visible_dead_letter(
    runner_and_sync: tuple[InProcessRunner, RecordingSync], store: SQLiteStore
) -> None:
    runner, sync = runner_and_sync
    sync.fail_always = WithingsTransient("Withings getmeas failed: ReadTimeout")
    await runner.request_sync("7", W(1, 100, 200))
    await runner.queue.join()
    assert len(sync.runs) == FAST.max_tries
    [letter] = await list_dead_letters(store)
    assert letter.data["job"] == "sync_user_job"
    assert letter.data["userid"] == "7"
    assert letter.data["error_class"] == "WithingsTransient"
    assert letter.data["error"] == "Withings getmeas failed: ReadTimeout"
    assert letter.data["tries"] == FAST.max_tries
    assert runner.metrics.value("fhir_gateway_dead_letters_total", {"job": "sync_user_job"}) == 1
    # Not stuck: the next notification starts a sync, with the windows kept from before.
    sync.fail_always = None
    await runner.request_sync("7", W(4, 500, 600))
    await runner.queue.join()
    assert sync.runs[-1].windows == (W(1, 100, 200), W(4, 500, 600))
    assert sync.runs[-1].ok


async def test_permanent_failure_is_not_retried_and_is_dead_lettered(
    runner_and_sync: tuple[InProcessRunner, RecordingSync], store: SQLiteStore
) -> None:
    runner, sync = runner_and_sync
    sync.failures.append(WithingsInvalidGrant("the user must consent again"))
    await record_notification(store, Notification("7", 1, 100, 200))
    await runner.request_sync("7", W(1, 100, 200))
    await runner.queue.join()
    assert len(sync.runs) == 1
    [letter] = await list_dead_letters(store)
    assert letter.data["error_class"] == "WithingsInvalidGrant"
    assert await store.list_records(INBOX_KIND) == []


async def test_arq_retries_then_dead_letter(redis_server: RedisServer, store: SQLiteStore) -> None:
    sync = RecordingSync(fail_always=WithingsTransient("Withings getmeas failed: HTTP 502"))
    metrics = GatewayMetrics()
    client = RedisJobClient(Settings(redis_url=redis_server.url), store)
    try:
        async with running_workers(redis_server.url, store, sync, metrics=[metrics]):
            await client.request_sync("9", W(1, 1, 2))
            deadline = time.monotonic() + 10
            while not await list_dead_letters(store) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await wait_for_idle(client, "9")
    finally:
        await client.stop()
    assert len(sync.runs) == FAST.max_tries
    [letter] = await list_dead_letters(store)
    assert (letter.data["userid"], letter.data["error_class"]) == ("9", "WithingsTransient")
    assert metrics.value("fhir_gateway_dead_letters_total", {"job": "sync_user_job"}) == 1
    assert (
        metrics.value("fhir_gateway_jobs_total", {"job": "sync_user_job", "outcome": "retry"}) == 2
    )


async def test_successful_sync_removes_the_inbox_records_it_served(
    runner_and_sync: tuple[InProcessRunner, RecordingSync], store: SQLiteStore
) -> None:
    runner, sync = runner_and_sync
    await record_notification(store, Notification("7", 1, 100, 200))
    await record_notification(store, Notification("8", 1, 100, 200))  # another user's: stays
    await runner.request_sync("7", W(1, 100, 200))
    await runner.queue.join()
    assert [record.data["userid"] for record in await store.list_records(INBOX_KIND)] == ["8"]


# ------------------------------------------------------------------------- reconciliation


@pytest.mark.parametrize(
    ("interval", "fields"),
    [
        (7200, CronFields(set(range(0, 24, 2)), {0}, {0})),
        (3600, CronFields(set(range(24)), {0}, {0})),
        (900, CronFields(None, {0, 15, 30, 45}, {0})),
        (5400, CronFields(None, None, {0})),  # not a divisor of the day: guard does the rest
        (20, CronFields(None, None, {0, 20, 40})),
    ],
)
def test_reconcile_schedule_from_interval(interval: int, fields: CronFields) -> None:
    assert reconcile_schedule(interval) == fields


async def test_period_guard_admits_one_reconciliation_per_period(
    redis_server: RedisServer, store: SQLiteStore
) -> None:
    sync = RecordingSync(users=["1", "2"])
    clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    runner = InProcessRunner(store, sync, tuning=FAST)
    try:
        contexts = [
            {**runner.queue.context, "redis": client, "reconcile_guard": reconcile_period_guard}
            for client in clients
        ]
        score = 1_700_000_000_000
        for offset in (0, 5_000, 7_200_000):  # same period twice, then the next period
            await asyncio.gather(
                *(reconcile_job({**ctx, "score": score + offset}) for ctx in contexts)
            )
            await runner.queue.join()
    finally:
        await runner.stop()
        for client in clients:
            await client.aclose()
    assert sorted(userid for userid, _ in sync.reconciled) == ["1", "1", "2", "2"]
    assert (
        runner.metrics.value(
            "fhir_gateway_jobs_total", {"job": "reconcile_job", "outcome": "skipped"}
        )
        == 7
    )


async def test_three_arq_workers_reconcile_once_per_period(
    redis_server: RedisServer, store: SQLiteStore
) -> None:
    sync = RecordingSync(users=["1", "2"])
    metrics = [GatewayMetrics() for _ in range(3)]
    tuning = replace(FAST, reconcile_interval=2.0)
    async with running_workers(
        redis_server.url, store, sync, count=3, tuning=tuning, metrics=metrics
    ):
        await asyncio.sleep(5.5)
    runs = sum(
        m.value("fhir_gateway_jobs_total", {"job": "reconcile_job", "outcome": "ok"})
        for m in metrics
    )
    assert runs >= 2
    # 5.5 s of 2 s periods touch at most 4 periods: one run per period, not one per worker.
    assert runs <= 4
    for userid in ("1", "2"):
        periods = [int(at // 2) for user, at in sync.reconciled if user == userid]
        # Every run reconciles every user, except that the per-user jobs of a run that starts
        # just before the workers shut down may not have run yet.
        assert runs - 1 <= len(periods) <= runs
        assert len(set(periods)) == len(periods)  # never two in the same period


def test_job_tuning_keeps_the_sync_inside_the_job_timeout() -> None:
    assert JobTuning(job_timeout=300).sync_timeout < 300


async def test_in_process_runner_resumes_what_the_previous_process_had_taken(
    store: SQLiteStore,
) -> None:
    record = await record_notification(store, Notification("7", 4, 100, 200))
    await mark_enqueued(store, record)  # ...and then that process died with its memory queue
    sync = RecordingSync()
    runner = InProcessRunner(store, sync, tuning=FAST)
    await runner.start()
    try:
        deadline = time.monotonic() + 5
        while (not sync.runs or runner.queue.active_ids()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await runner.stop()
    assert [run.windows for run in sync.runs] == [(W(4, 100, 200),)]
    assert await store.list_records(INBOX_KIND) == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (WithingsTransient("timeout"), "retry"),
        (WithingsRateLimited("601", wait_seconds=30), "retry"),
        (WithingsAuthError("401"), "retry"),
        (StoreError("mongo unreachable"), "retry"),
        (TimeoutError(), "retry"),
        (WithingsInvalidGrant("refused"), "permanent"),
        (NeedsReauth("7", "refresh refused"), "permanent"),
        (WithingsInvalidParams("503"), "permanent"),
        (KeyError("body"), "bug"),
    ],
)
def test_failure_classification(error: BaseException, kind: str) -> None:
    assert classify_failure(error) == kind


def test_rate_limit_hint_sets_the_least_backoff() -> None:
    tuning = JobTuning(retry_base_delay=1, retry_max_delay=10)
    assert backoff(1, tuning, WithingsRateLimited("601", wait_seconds=188)) == 188
    assert 0.5 <= backoff(1, tuning, WithingsTransient("x")) <= 1
    assert 5 <= backoff(9, tuning, WithingsTransient("x")) <= 10


async def test_a_bug_in_the_sync_is_dead_lettered_and_does_not_stick_the_user(
    runner_and_sync: tuple[InProcessRunner, RecordingSync], store: SQLiteStore
) -> None:
    runner, sync = runner_and_sync
    sync.failures.append(KeyError("measuregrps"))
    await runner.request_sync("7", W(1, 1, 2))
    await runner.queue.join()
    [letter] = await list_dead_letters(store)
    assert letter.data["error_class"] == "KeyError"
    assert describe_dead_letter(letter).startswith("sync_user_job user=7 tries=1 times=1 last=")
    assert await runner.request_sync("7", None) is True
    await runner.queue.join()
    assert sync.runs[-1].ok and sync.runs[-1].windows == (W(1, 1, 2),)


def test_worker_settings() -> None:
    options = worker_settings(Settings(redis_url="redis://127.0.0.1:1/0"), services(None, None))  # type: ignore[arg-type]
    assert [f.name for f in options["functions"]] == ["sync_user_job", "reconcile_user_job"]
    assert all(f.keep_result_s == 0 for f in options["functions"])
    reconcile, sweep = options["cron_jobs"]
    assert (reconcile.name, reconcile.unique, reconcile.hour, reconcile.minute) == (
        "cron:reconcile_job",
        True,
        set(range(0, 24, 2)),
        {0},
    )
    assert (sweep.name, sweep.unique, sweep.second) == ("cron:sweep_inbox_job", True, {30})
    assert options["keep_result"] == 0 and options["max_tries"] == 5


def test_a_worker_needs_redis() -> None:
    with pytest.raises(ConfigError):
        worker_settings(Settings(), services(None, None))  # type: ignore[arg-type]
