from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from fhir_gateway.config import Settings
from fhir_gateway.jobs.budget import MemoryBudget, RedisBudget, make_budget
from tests.redis_server import RedisServer


def most_in_any_window(grants: list[float], window: float) -> int:
    """The largest number of grants inside any half-open interval (t - window, t]."""
    ordered = sorted(grants)
    most = 0
    first = 0
    for last, moment in enumerate(ordered):
        while ordered[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


class FakeTime:
    """A clock that only moves when someone sleeps: the budget's waits cost no real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


async def test_memory_budget_never_exceeds_the_limit_with_an_accelerated_clock() -> None:
    fake = FakeTime()
    budget = MemoryBudget(120, 60.0, clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    async def caller(slots: int) -> None:
        for _ in range(slots):
            await budget.acquire()
            grants.append(fake.now)

    await asyncio.gather(caller(100), caller(100), caller(100))
    assert len(grants) == 300
    assert most_in_any_window(grants, 60.0) == 120
    assert fake.now >= 120.0  # 300 slots at 120/min need at least two full windows


async def test_redis_budget_shared_by_three_processes_never_exceeds_the_limit(
    redis_server: RedisServer,
) -> None:
    limit, window = 12, 0.2
    # Three "processes": separate connections, separate budget objects, one key.
    clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    budgets = [RedisBudget(client, limit, window) for client in clients]
    # The server's grant times stay integer microseconds: as float seconds near 1.8e9 two grants
    # exactly one window apart could compare as closer than that and count as one window.
    server_grants: list[float] = []
    seen_by_callers: list[float] = []

    async def process(budget: RedisBudget, slots: int) -> None:
        async def caller(count: int) -> None:
            for _ in range(count):
                server_grants.append(await budget.acquire_slot())
                seen_by_callers.append(time.monotonic())

        await asyncio.gather(*(caller(slots // 4) for _ in range(4)))

    started = time.monotonic()
    try:
        await asyncio.gather(*(process(budget, 100) for budget in budgets))
    finally:
        for client in clients:
            await client.aclose()
    elapsed = time.monotonic() - started
    assert len(server_grants) == 300
    assert most_in_any_window(server_grants, round(window * 1_000_000)) <= limit
    # Seen from outside too: 300 slots at 12 per window cannot finish in fewer than 24 windows.
    assert elapsed >= (300 / limit - 1) * window
    assert most_in_any_window(seen_by_callers, window * 0.7) <= limit


async def test_redis_budget_acquire_is_the_protocol_method(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        budget = make_budget(Settings(withings_requests_per_minute=2), client)
        await budget.acquire()
        await budget.acquire()
        assert await client.zcard("fhir-gateway:withings-budget") == 2
    finally:
        await client.aclose()


def test_without_redis_the_budget_is_per_process() -> None:
    budget = make_budget(Settings(withings_requests_per_minute=7), None)
    assert isinstance(budget, MemoryBudget)
    assert budget.limit == 7
