"""A sync request cancelled between the coalescer's "queued" and the enqueue of its job (the
webhook's 1 s enqueue timeout, arq's job timeout, SIGTERM) must not leave the user waiting for
the 900 s queued timeout: the next request or the next sweep enqueues the job it names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest

from fhir_gateway.config import Settings
from fhir_gateway.jobs.coalesce import Coalescer, SyncWindow, UserSyncState
from fhir_gateway.jobs.inbox import INBOX_KIND, Notification, record_notification
from fhir_gateway.jobs.queue import JobQueue
from fhir_gateway.jobs.tasks import (
    job_context,
    request_user_sync,
    sweep_inbox_job,
)
from fhir_gateway.jobs.worker import InProcessRunner, RedisJobClient
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.sqlite import SQLiteStore
from tests.jobs.recording_sync import RecordingSync
from tests.jobs.workers import FAST, running_workers

W = SyncWindow
# Short enough that the arq and in-process job timeouts land in the hung step within a second.
SHORT = replace(FAST, job_timeout=1.0)


class HangsOnce:
    """A Coalescer whose `method` does its real work once and then never replies, as when the
    caller is cancelled right after Redis applied the change; every other call passes."""

    def __init__(self, inner: Coalescer, method: str) -> None:
        self.inner = inner
        self.method = method
        self.hung = asyncio.Event()
        self._release = asyncio.Event()
        self._armed = True

    def release(self) -> None:
        self._release.set()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        real: Callable[..., Awaitable[Any]] = getattr(self.inner, name)
        if name != self.method:
            return real

        async def hanging(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)
            if self._armed:
                self._armed = False
                self.hung.set()
                await self._release.wait()
            return result

        return hanging


@dataclass
class Backend:
    """One way of running the jobs: in this process, or arq workers on a real Redis."""

    coalescer: Coalescer
    queue: JobQueue
    store: SQLiteStore
    sync: RecordingSync
    context: dict[str, Any]

    async def sweep(self) -> None:
        """What the sweeper cron (arq) or loop (in-process) runs every minute."""
        await sweep_inbox_job(self.context)

    async def state(self, userid: str) -> UserSyncState:
        return await self.coalescer.state(userid)


@asynccontextmanager
async def in_process(
    store: SQLiteStore, sync: RecordingSync, adjust: Callable[[dict[str, Any]], None]
) -> AsyncIterator[Backend]:
    runner = InProcessRunner(store, sync, tuning=SHORT)
    adjust(runner.queue.context)
    try:
        yield Backend(runner.coalescer, runner.queue, store, sync, runner.queue.context)
    finally:
        await runner.stop()


@asynccontextmanager
async def with_arq(
    redis_url: str,
    store: SQLiteStore,
    sync: RecordingSync,
    adjust: Callable[[dict[str, Any]], None],
) -> AsyncIterator[Backend]:
    client = RedisJobClient(Settings(redis_url=redis_url), store)
    context = job_context(
        store=store,
        sync=sync,
        coalescer=client.coalescer,
        queue=client.queue,
        metrics=GatewayMetrics(),
        tuning=SHORT,
    )
    try:
        async with running_workers(
            redis_url, store, sync, count=2, tuning=SHORT, adjust_context=adjust
        ):
            yield Backend(client.coalescer, client.queue, store, sync, context)
    finally:
        await client.stop()


@pytest.fixture(params=["in_process", "arq"])
def backend_factory(request: pytest.FixtureRequest, store: SQLiteStore) -> Callable[..., Any]:
    def factory(
        sync: RecordingSync, adjust: Callable[[dict[str, Any]], None] = lambda ctx: None
    ) -> Any:
        if request.param == "in_process":
            return in_process(store, sync, adjust)
        return with_arq(request.getfixturevalue("redis_server").url, store, sync, adjust)

    return factory


async def served(sync: RecordingSync, window: SyncWindow, after: float, timeout: float) -> float:
    """Seconds until a successful sync that started after `after` re-fetched `window`."""
    deadline = time.monotonic() + timeout
    while not sync.covered(window, after=after):
        if time.monotonic() > deadline:
            raise AssertionError(f"{window} not served within {timeout} s: {sync.runs}")
        await asyncio.sleep(0.02)
    return time.monotonic() - after


@pytest.mark.parametrize("recovery", ["next_request", "sweep"])
async def test_request_cancelled_after_queued_before_enqueue_is_served_promptly(
    backend_factory: Callable[..., Any], recovery: str
) -> None:
    sync = RecordingSync()
    async with backend_factory(sync) as backend:
        hanging = HangsOnce(backend.coalescer, "request")
        window = W(1, 100, 200)
        # The webhook recorded the notification, then its enqueue timed out at exactly this
        # point: the coalescer says queued, the job was never enqueued.
        await record_notification(backend.store, Notification("7", 1, 100, 200))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await request_user_sync(hanging, backend.queue, "7", window)
        hanging.release()
        state = await backend.state("7")
        assert state.phase == "queued" and state.job is not None
        assert not await backend.queue.job_alive(state.job)
        if recovery == "next_request":
            later = W(4, 300, 400)
            assert await request_user_sync(backend.coalescer, backend.queue, "7", later)
            await served(sync, later, started, timeout=5)
        else:
            await backend.sweep()
        waited = await served(sync, window, started, timeout=5)
        assert waited < 5  # not the 900 s queued timeout
        await wait_for(lambda: backend.state("7"), lambda s: s.phase == "idle")
        # The job removes what it served right after releasing the user.
        await wait_for(lambda: backend.store.list_records(INBOX_KIND), lambda left: left == [])
        # The revived job, and at most one more when the sweep listed the pending record just
        # before that job removed it; never two at once.
        assert 1 <= len(sync.runs) <= 2 and sync.max_concurrent == 1


async def test_follow_up_lost_between_release_and_enqueue_is_served_by_the_next_sweep(
    backend_factory: Callable[..., Any],
) -> None:
    sync = RecordingSync(delay=0.3)
    hangs: list[HangsOnce] = []

    def hang_on_finish(ctx: dict[str, Any]) -> None:
        hangs.append(HangsOnce(ctx["coalescer"], "finish"))
        ctx["coalescer"] = hangs[-1]

    async with backend_factory(sync, hang_on_finish) as backend:
        started = time.monotonic()
        assert await request_user_sync(backend.coalescer, backend.queue, "7", W(1, 100, 200))
        await asyncio.wait_for(sync.started_event.wait(), 5)
        during = W(4, 300, 400)
        assert not await request_user_sync(backend.coalescer, backend.queue, "7", during)
        # finish() turns the dirty user into "queued on a follow-up", then the job timeout
        # cancels the job before it enqueues that follow-up.
        await wait_for(lambda: backend.state("7"), lambda s: s.phase == "queued", timeout=10)
        state = await backend.state("7")
        assert state.job is not None
        await wait_for(
            lambda: backend.queue.job_alive(state.job or ""), lambda alive: not alive, timeout=10
        )
        assert len(sync.runs) == 1 and not sync.covered(during, after=started)
        for hang in hangs:
            hang.release()
        swept_at = time.monotonic()
        await backend.sweep()
        assert await served(sync, during, started, timeout=5) < 10
        assert time.monotonic() - swept_at < 5
        await wait_for(lambda: backend.state("7"), lambda s: s.phase == "idle")
        assert len(sync.runs) == 2


async def wait_for(
    read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 5
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if ok(value):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value} after {timeout} s")
        await asyncio.sleep(0.02)
