from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from fhir_gateway.jobs.coalesce import (
    MAX_WINDOWS_PER_APPLI,
    Coalescer,
    MemoryCoalescer,
    RedisCoalescer,
    SyncWindow,
    Timing,
    merge_windows,
)
from tests.redis_server import RedisServer

W = SyncWindow


# ------------------------------------------------------------------------ merging (pure)


@pytest.mark.parametrize(
    ("existing", "new", "merged"),
    [
        ((), W(1, 10, 20), (W(1, 10, 20),)),
        ((W(1, 10, 20),), W(1, 15, 30), (W(1, 10, 30),)),
        ((W(1, 10, 20),), W(1, 10, 20), (W(1, 10, 20),)),
        ((W(1, 0, 10),), W(1, 100_000, 100_010), (W(1, 0, 10), W(1, 100_000, 100_010))),
        ((W(4, 0, 10),), W(1, 0, 10), (W(1, 0, 10), W(4, 0, 10))),
        ((W(1, None, None),), W(1, None, None), (W(1, None, None),)),
        ((W(1, 0, 10),), None, (W(1, 0, 10),)),
    ],
)
def test_merge_windows(
    existing: tuple[SyncWindow, ...], new: SyncWindow | None, merged: tuple[SyncWindow, ...]
) -> None:
    assert merge_windows(existing, new) == merged


def test_merge_keeps_a_bounded_superset() -> None:
    far_apart = [W(1, i * 100_000, i * 100_000 + 10) for i in range(50)]
    merged: tuple[SyncWindow, ...] = ()
    for window in far_apart:
        merged = merge_windows(merged, window)
    assert len(merged) == MAX_WINDOWS_PER_APPLI
    for window in far_apart:
        assert any(
            m.startdate is not None
            and m.enddate is not None
            and window.startdate is not None
            and window.enddate is not None
            and m.startdate <= window.startdate
            and window.enddate <= m.enddate
            for m in merged
        )


# ------------------------------------------------------------------------ both backends


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def coalescer(request: pytest.FixtureRequest) -> AsyncIterator[Coalescer]:
    if request.param == "memory":
        yield MemoryCoalescer(Timing(lease=60, queued=900))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    yield RedisCoalescer(client, timing=Timing(lease=60, queued=900))
    await client.aclose()


async def test_one_job_per_burst_and_a_follow_up_for_requests_during_the_run(
    coalescer: Coalescer,
) -> None:
    assert await coalescer.request("7", W(1, 0, 10)) is not None
    assert await coalescer.request("7", W(1, 5, 20)) is None  # merged into the queued job
    assert await coalescer.start("7") == [W(1, 0, 20)]
    assert await coalescer.request("7", W(4, 100, 200)) is None  # running: marked dirty
    assert (await coalescer.state("7")).dirty
    assert await coalescer.finish("7", ok=True) is not None  # follow-up needed
    assert await coalescer.start("7") == [W(4, 100, 200)]
    assert await coalescer.finish("7", ok=True) is None
    assert (await coalescer.state("7")).phase == "idle"
    assert await coalescer.request("7", None) is not None  # idle again: a new job


async def test_a_second_job_for_a_running_user_does_not_run_and_causes_a_follow_up(
    coalescer: Coalescer,
) -> None:
    await coalescer.request("7", W(1, 0, 10))
    assert await coalescer.start("7") is not None
    assert await coalescer.start("7") is None
    assert await coalescer.finish("7", ok=True) is not None


async def test_failed_sync_puts_its_windows_back(coalescer: Coalescer) -> None:
    await coalescer.request("7", W(1, 0, 10))
    assert await coalescer.start("7") == [W(1, 0, 10)]
    await coalescer.request("7", W(2, 50, 60))
    assert await coalescer.finish("7", ok=False) is None  # the job itself retries
    state = await coalescer.state("7")
    assert state.phase == "queued"
    assert await coalescer.start("7") == [W(1, 0, 10), W(2, 50, 60)]


async def test_given_up_sync_keeps_windows_for_the_next_request(coalescer: Coalescer) -> None:
    await coalescer.request("7", W(1, 0, 10))
    await coalescer.start("7")
    assert await coalescer.finish("7", ok=False, retrying=False) is None
    assert (await coalescer.state("7")).phase == "idle"
    assert await coalescer.request("7", W(4, 0, 10)) is not None
    assert await coalescer.start("7") == [W(1, 0, 10), W(4, 0, 10)]


class Jobs:
    """The queue as the coalescer sees it: which job ids are queued or running."""

    def __init__(self) -> None:
        self.alive: set[str] = set()

    async def job_alive(self, job_id: str) -> bool:
        return job_id in self.alive


@pytest.fixture(params=["memory", "redis"])
async def coalescer_and_jobs(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Coalescer, Jobs]]:
    jobs = Jobs()
    timing = Timing(lease=60, queued=900)
    if request.param == "memory":
        yield MemoryCoalescer(timing, job_alive=jobs.job_alive), jobs
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    yield RedisCoalescer(client, timing=timing, job_alive=jobs.job_alive), jobs
    await client.aclose()


async def test_a_queued_job_that_never_reached_the_queue_is_enqueued_again_under_its_id(
    coalescer_and_jobs: tuple[Coalescer, Jobs],
) -> None:
    coalescer, jobs = coalescer_and_jobs
    job = await coalescer.request("7", W(1, 0, 10))
    assert job is not None and job.startswith("sync:7:")
    # ...the enqueuer was cancelled before enqueueing `job`: the next request sees it missing.
    assert await coalescer.request("7", W(4, 0, 10)) == job
    assert await coalescer.revive("7") == job
    assert await coalescer.queued_users() == ["7"]
    jobs.alive.add(job)  # enqueued now: merged into it, nothing to revive
    assert await coalescer.request("7", W(2, 0, 10)) is None
    assert await coalescer.revive("7") is None
    assert await coalescer.start("7") == [W(1, 0, 10), W(2, 0, 10), W(4, 0, 10)]
    assert await coalescer.queued_users() == []
    assert await coalescer.revive("7") is None  # running, not queued


async def test_the_queued_state_names_the_follow_up_and_the_retrying_job(
    coalescer_and_jobs: tuple[Coalescer, Jobs],
) -> None:
    coalescer, jobs = coalescer_and_jobs
    first = await coalescer.request("7", W(1, 0, 10))
    assert first is not None
    jobs.alive.add(first)
    await coalescer.start("7")
    await coalescer.request("7", W(4, 0, 10))  # during the run: dirty
    follow_up = await coalescer.finish("7", ok=True, job_id=first)
    jobs.alive.discard(first)
    assert follow_up is not None and follow_up != first
    assert (await coalescer.state("7")).job == follow_up
    # The follow-up's enqueue was lost (the job was cancelled right after finish()).
    assert await coalescer.revive("7") == follow_up
    jobs.alive.add(follow_up)
    await coalescer.start("7")
    # A failure that arq retries: queued on the same job, which is still alive.
    assert await coalescer.finish("7", ok=False, retrying=True, job_id=follow_up) is None
    assert (await coalescer.state("7")).job == follow_up
    assert await coalescer.revive("7") is None
    # ...unless arq gave up on it (its job timeout): then it is enqueued again.
    jobs.alive.discard(follow_up)
    assert await coalescer.revive("7") == follow_up


async def test_memory_lease_expiry_releases_a_user_whose_worker_died() -> None:
    clock = Clock()
    coalescer = MemoryCoalescer(Timing(lease=60, queued=900), clock=clock)
    await coalescer.request("7", W(1, 0, 10))
    await coalescer.start("7")  # ...and the worker is killed: no refresh, no finish
    clock.now += 30
    assert await coalescer.request("7", W(4, 0, 10)) is None  # lease still valid
    await coalescer.refresh("7")
    clock.now += 59
    assert await coalescer.request("7", W(4, 0, 10)) is None  # refreshed lease still valid
    clock.now += 2
    assert await coalescer.request("7", W(4, 0, 10)) is not None
    assert await coalescer.start("7") == [W(1, 0, 10), W(4, 0, 10)]


async def test_memory_queued_state_expires_when_its_job_never_started() -> None:
    clock = Clock()
    coalescer = MemoryCoalescer(Timing(lease=60, queued=900), clock=clock)
    assert await coalescer.request("7", W(1, 0, 10)) is not None  # ...but the enqueue was lost
    clock.now += 899
    assert await coalescer.request("7", None) is None
    clock.now += 2
    assert await coalescer.request("7", None) is not None


async def test_redis_concurrent_requests_from_many_clients_enqueue_exactly_once(
    redis_server: RedisServer,
) -> None:
    clients = [Redis.from_url(redis_server.url) for _ in range(10)]
    try:
        coalescers = [RedisCoalescer(client) for client in clients]
        answers = await asyncio.gather(
            *(coalescers[i % 10].request("42", W(1, i * 10, i * 10 + 5)) for i in range(100))
        )
        assert sum(answer is not None for answer in answers) == 1
        windows = await coalescers[0].start("42")
        assert windows == [W(1, 0, 995)]
    finally:
        for client in clients:
            await client.aclose()


HOLD_AND_DIE = """
import asyncio, sys
from redis.asyncio import Redis
from fhir_gateway.jobs.coalesce import RedisCoalescer, SyncWindow, Timing

async def main():
    coalescer = RedisCoalescer(Redis.from_url(sys.argv[1]), timing=Timing(lease=float(sys.argv[2])))
    await coalescer.request("7", SyncWindow(1, 100, 200))
    await coalescer.start("7")
    print("claimed", flush=True)
    while True:  # a live sync refreshes its lease
        await asyncio.sleep(float(sys.argv[2]) / 3)
        await coalescer.refresh("7")

asyncio.run(main())
"""


async def test_redis_lease_expires_after_the_holder_is_killed(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    lease = 0.6
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_DIE, redis_server.url, str(lease)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == b"claimed\n"
        coalescer = RedisCoalescer(redis_client, timing=Timing(lease=lease))
        await asyncio.sleep(lease * 1.5)
        # Alive and refreshing: the user is still held.
        assert await coalescer.request("7", SyncWindow(4, 300, 400)) is None
        holder.kill()  # SIGKILL: no finish, no cleanup
        holder.wait()
        killed_at = time.monotonic()
        await wait_until(lambda: coalescer.request("7", None), timeout=lease * 3)
        assert time.monotonic() - killed_at <= lease + 0.5
        # The windows the dead holder had claimed are handed to the next sync.
        assert await coalescer.start("7") == [SyncWindow(1, 100, 200), SyncWindow(4, 300, 400)]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


async def wait_until(check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
