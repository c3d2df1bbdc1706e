"""Replay protection without event ids (reliability-anchors §1.3.4): a notification identical to
one seen within the replay window asks for no new sync.

Withings sends no id (withings-api §5.6), so identity is the payload digest (`inbox_key`). The
first copy was recorded in the inbox and queued, and is served by the sync it asked for (or by
the follow-up of a running one); a copy of it arriving later within the window only repeats
what is already being handled. An edit that Withings announces with an identical payload
inside the window waits for the periodic reconciliation.

A copy counts as seen only once it is in the inbox (`remember` after the write): if the write
fails, the webhook answers 5xx and Withings' retry of it must be taken, not dropped as a replay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("fhir_gateway.jobs")

REPLAY_WINDOW_SECONDS = 600.0
_KEY_PREFIX = "fhir-gateway:seen:"


class ReplayGuard(Protocol):
    async def seen(self, key: str) -> bool:
        """True if `key` was remembered within the window."""
        ...

    async def remember(self, key: str) -> None:
        """Remember `key` for the window (call once its notification is safely recorded)."""
        ...


class MemoryReplayGuard:
    """For one process (embedded mode)."""

    def __init__(
        self, window: float = REPLAY_WINDOW_SECONDS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self._clock = clock
        self._seen: dict[str, float] = {}  # key → when it expires

    async def seen(self, key: str) -> bool:
        expiry = self._seen.get(key)
        return expiry is not None and expiry > self._clock()

    async def remember(self, key: str) -> None:
        now = self._clock()
        if len(self._seen) > 10_000:
            self._seen = {k: expiry for k, expiry in self._seen.items() if expiry > now}
        self._seen[key] = now + self.window


class RedisReplayGuard:
    """Shared by every web process: one key with a TTL per notification."""

    def __init__(self, redis: Redis, window: float = REPLAY_WINDOW_SECONDS) -> None:
        self.window = window
        self._redis = redis

    async def seen(self, key: str) -> bool:
        try:
            return bool(await self._redis.exists(_KEY_PREFIX + key))
        except (RedisError, OSError) as exc:
            # Fail open: the inbox and the coalescer keep a duplicate harmless; dropping a
            # first copy because Redis is down would not be.
            logger.warning("replay check unavailable (%s); treating as new", type(exc).__name__)
            return False

    async def remember(self, key: str) -> None:
        try:
            await self._redis.set(_KEY_PREFIX + key, "1", ex=max(1, int(self.window)))
        except (RedisError, OSError) as exc:
            logger.warning("replay not remembered (%s)", type(exc).__name__)
