"""The lock seam: named mutual exclusion, in-process (embedded) or across processes (Redis).

A lock here narrows races, it does not end them: a Redis lock expires while its holder may still
be running (a GC pause, a slow network), so work done under it must still be fenced by a
compare-and-set on the data it writes (reliability-anchors §2.3, Kleppmann's fencing critique).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.lock import Lock as RedisLock
from redis.exceptions import LockNotOwnedError, RedisError

from fhir_gateway.config import Settings
from fhir_gateway.errors import GatewayError

log = logging.getLogger(__name__)


class LockUnavailable(GatewayError):
    """The lock could not be taken in time (busy or lock service down); retry later."""

    status, issue_code = 503, "transient"


class LockFactory(Protocol):
    def lock(
        self, name: str, *, timeout: float, blocking_timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold `name` exclusively; raise LockUnavailable if it is not free within the wait.

        `timeout`: the longest the lock is held before it expires on its own, so a killed
        process never leaves it stuck. `blocking_timeout`: the longest to wait for it
        (default `timeout`).
        """
        ...


class InProcessLocks:
    """One asyncio.Lock per name, for a single process (embedded mode and tests).

    The registry holds locks weakly: a lock lives while someone holds or awaits it, so the
    registry never grows with the number of names ever used. There is no lease to expire:
    the lock dies with the process that holds it.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._locks)

    async def aclose(self) -> None:
        return None

    def lock(
        self, name: str, *, timeout: float, blocking_timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._hold(name, timeout if blocking_timeout is None else blocking_timeout)

    @asynccontextmanager
    async def _hold(self, name: str, wait: float) -> AsyncIterator[None]:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        try:
            # asyncio.Lock only counts as acquired once acquire() returns, so a cancellation by
            # the timeout never leaves it held.
            async with asyncio.timeout(wait):
                await lock.acquire()
        except TimeoutError:
            raise LockUnavailable(f"lock {name!r} is busy") from None
        try:
            yield
        finally:
            lock.release()


class RedisLocks:
    """Locks shared by every process using one Redis: `SET key token NX PX`, compare-and-delete."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "fhir-gateway:lock:",
        poll: float = 0.05,
        owns_connection: bool = False,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._poll = poll
        self._owns_connection = owns_connection

    @classmethod
    def from_url(cls, redis_url: str) -> RedisLocks:
        """Locks on their own connection pool (closed by `aclose`); connects on first use."""
        return cls(Redis.from_url(redis_url), owns_connection=True)

    async def aclose(self) -> None:
        if self._owns_connection:
            await self._redis.aclose()

    def lock(
        self, name: str, *, timeout: float, blocking_timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._hold(name, timeout, timeout if blocking_timeout is None else blocking_timeout)

    @asynccontextmanager
    async def _hold(self, name: str, lease: float, wait: float) -> AsyncIterator[None]:
        # A fresh Lock per holder with thread_local off: the token lives in this object only,
        # so concurrent tasks on one thread never see each other's token.
        lock = RedisLock(
            self._redis,
            self._prefix + name,
            timeout=lease,
            sleep=self._poll,
            blocking_timeout=wait,
            thread_local=False,
        )
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            raise LockUnavailable(f"lock {name!r}: lock service unreachable") from exc
        if not acquired:
            raise LockUnavailable(f"lock {name!r} is busy")
        try:
            yield
        finally:
            await _release(lock, name)


def make_locks(settings: Settings) -> InProcessLocks | RedisLocks:
    """Shared by every process through Redis when REDIS_URL is set, else within this process."""
    if settings.redis_url is None:
        return InProcessLocks()
    return RedisLocks.from_url(settings.redis_url)


async def _release(lock: RedisLock, name: str) -> None:
    try:
        await lock.release()
    except LockNotOwnedError:
        # The lease ran out and maybe someone else holds it now; our writes were CAS-fenced.
        log.warning("lock %r expired before its holder released it", name)
    except RedisError:
        # The key still expires by itself after its lease; raising here would hide the
        # outcome of the work done under the lock.
        log.warning("lock %r could not be released (redis unreachable); it will expire", name)
