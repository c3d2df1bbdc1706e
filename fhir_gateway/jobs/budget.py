"""One Withings request budget for the whole application (withings-api §2.3: 120 requests per
minute per app), shared by every web and worker process through Redis, or within one process.

A sliding-window log: a slot is granted when fewer than `limit` grants happened in the last
`window` seconds. The Redis version decides inside one Lua script with the server's clock, so
processes on hosts with skewed clocks never exceed the limit together.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis

from fhir_gateway.config import Settings

# Returns {1, grant_time_us} or {0, wait_us}. Entries at or before now - window have expired.
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
  return {1, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""

DEFAULT_WINDOW_SECONDS = 60.0


class RequestBudget(Protocol):
    async def acquire(self) -> None:
        """Wait until a request slot is free, and take it."""
        ...


class MemoryBudget:
    """The same sliding window for one process (embedded mode)."""

    def __init__(
        self,
        limit: int,
        window: float = DEFAULT_WINDOW_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._grants: deque[float] = deque()

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            while self._grants and self._grants[0] <= now - self.window:
                self._grants.popleft()
            if len(self._grants) < self.limit:
                self._grants.append(now)
                return
            await self._sleep(self._grants[0] + self.window - now)

    async def aclose(self) -> None:
        return None


class RedisBudget:
    """The budget in one Redis sorted set, shared by every process of the application."""

    def __init__(
        self,
        redis: Redis,
        limit: int,
        window: float = DEFAULT_WINDOW_SECONDS,
        *,
        key: str = "fhir-gateway:withings-budget",
        owns_connection: bool = False,
    ) -> None:
        self.limit = limit
        self.window = window
        self._redis = redis
        self._key = key
        self._owns_connection = owns_connection
        self._script = redis.register_script(_SLIDING_WINDOW)

    async def aclose(self) -> None:
        if self._owns_connection:
            await self._redis.aclose()

    async def acquire(self) -> None:
        await self.acquire_slot()

    async def acquire_slot(self) -> int:
        """Take a slot; returns the grant time (Redis server clock, microseconds)."""
        window_us = int(self.window * 1_000_000)
        while True:
            granted, value = await self._script(
                keys=[self._key], args=[self.limit, window_us, uuid.uuid4().hex]
            )
            if int(granted) == 1:
                return int(value)
            # A little jitter so that waiting processes do not all retry at the same instant.
            await asyncio.sleep(int(value) / 1_000_000 + random.random() * 0.01)


def make_budget(settings: Settings, redis: Redis | None = None) -> MemoryBudget | RedisBudget:
    """Shared through Redis when there is one (`redis`, else its own connection to REDIS_URL,
    closed by `aclose`), else per process."""
    limit = settings.withings_requests_per_minute
    if redis is not None:
        return RedisBudget(redis, limit)
    if settings.redis_url is not None:
        return RedisBudget(Redis.from_url(settings.redis_url), limit, owns_connection=True)
    return MemoryBudget(limit)
