"""Replay protection: a copy of a notification seen within the window asks for no new sync."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from fhir_gateway.errors import StoreError
from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.jobs.inbox import INBOX_KIND, Notification, NotificationIntake
from fhir_gateway.jobs.replay import MemoryReplayGuard, RedisReplayGuard, ReplayGuard
from fhir_gateway.store.sqlite import SQLiteStore
from tests.redis_server import RestartableRedis

NOTIFICATION = Notification("12345", 1, 1_530_576_000, 1_530_698_753)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_guard_remembers_a_key_for_the_window() -> None:
    clock = Clock()
    guard = MemoryReplayGuard(window=600, clock=clock)
    assert not await guard.seen("a")
    assert not await guard.seen("a")  # looking does not remember
    await guard.remember("a")
    assert await guard.seen("a")
    assert not await guard.seen("b")
    clock.now += 599
    assert await guard.seen("a")
    clock.now += 2
    assert not await guard.seen("a")  # the window has passed: a real new notification


async def test_redis_guard_is_shared_and_fails_open(restartable_redis: RestartableRedis) -> None:
    first, second = Redis.from_url(restartable_redis.url), Redis.from_url(restartable_redis.url)
    try:
        web_a, web_b = RedisReplayGuard(first), RedisReplayGuard(second)
        assert not await web_a.seen("k")
        await web_a.remember("k")
        assert await web_b.seen("k")  # another web process recorded it first
        assert 0 < await first.ttl("fhir-gateway:seen:k") <= 600
        restartable_redis.stop()
        # Redis down: treated as new, so that a first copy is never dropped.
        assert not await web_a.seen("k")
        await web_a.remember("k")  # and remembering it does not fail the notification
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize("guard_kind", ["memory", "redis"])
async def test_a_copy_whose_inbox_write_failed_is_taken_when_withings_retries_it(
    store: SQLiteStore, request: pytest.FixtureRequest, guard_kind: str
) -> None:
    requested: list[str] = []

    async def request_sync(userid: str, window: SyncWindow | None) -> bool:
        requested.append(userid)
        return True

    client: Redis | None = None
    guard: ReplayGuard = MemoryReplayGuard()
    if guard_kind == "redis":
        client = Redis.from_url(request.getfixturevalue("redis_server").url)
        guard = RedisReplayGuard(client)
    try:
        intake = NotificationIntake(store, request_sync, replays=guard)
        await store.close()  # the inbox write fails: the webhook answers 5xx
        with pytest.raises(StoreError):
            await intake(NOTIFICATION)
        assert requested == []
        await store.open()
        # Withings retries the same payload (withings-api §5.5): recorded and requested.
        assert await intake(NOTIFICATION) == "enqueued"
        assert requested == ["12345"]
        assert len(await store.list_records(INBOX_KIND)) == 1
        assert await intake(NOTIFICATION) == "replay"  # a copy after that is a replay
    finally:
        if client is not None:
            await client.aclose()


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
