"""Replay protection: a copy of a notification seen within the window asks for no new sync."""

from __future__ import annotations

from redis.asyncio import Redis

from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.jobs.inbox import INBOX_KIND, Notification, NotificationIntake
from fhir_gateway.jobs.replay import MemoryReplayGuard, RedisReplayGuard
from fhir_gateway.store.sqlite import SQLiteStore
from tests.jobs.conftest import RestartableRedis

NOTIFICATION = Notification("12345", 1, 1_530_576_000, 1_530_698_753)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_guard_admits_one_copy_per_window() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(window=600, clock=clock)
    assert await guard.first_seen("a")
    assert not await guard.first_seen("a")
    assert await guard.first_seen("b")
    clock.now += 599
    assert not await guard.first_seen("a")
    clock.now += 2
    assert await guard.first_seen("a")  # the window has passed: a real new notification


async def test_redis_guard_is_shared_and_fails_open(restartable_redis: RestartableRedis) -> None:
    first, second = Redis.from_url(restartable_redis.url), Redis.from_url(restartable_redis.url)
    try:
        web_a, web_b = RedisReplayGuard(first), RedisReplayGuard(second)
        assert await web_a.first_seen("k")
        assert not await web_b.first_seen("k")  # another web process saw it first
        assert 0 < await first.ttl("fhir-gateway:seen:k") <= 600
        restartable_redis.stop()
        # Redis down: treated as new, so that a first copy is never dropped.
        assert await web_a.first_seen("k")
    finally:
        await first.aclose()
        await second.aclose()


async def test_the_intake_records_and_requests_only_the_first_copy(store: SQLiteStore) -> None:
    requested: list[tuple[str, SyncWindow | None]] = []

    async def request_sync(userid: str, window: SyncWindow | None) -> bool:
        requested.append((userid, window))
        return True

    intake = NotificationIntake(store, request_sync, replays=MemoryReplayGuard())
    assert await intake(NOTIFICATION) == "enqueued"
    inbox = await store.list_records(INBOX_KIND)
    assert [record.version for record in inbox] == [2]  # written, then marked enqueued
    outcomes = [await intake(NOTIFICATION) for _ in range(99)]
    assert set(outcomes) == {"replay"}
    assert requested == [("12345", NOTIFICATION.window())]
    # Replays leave the inbox alone: no refreshed record for the sweeper to request again.
    assert [record.version for record in await store.list_records(INBOX_KIND)] == [2]
    other = Notification("12345", 1, 1_530_576_000, 1_530_698_754)
    assert await intake(other) == "enqueued"
