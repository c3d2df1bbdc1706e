"""`GET /health/ready`: can this process do its work, and what needs an operator's eye.

Only the store and Redis (when configured) decide readiness: without them no notification can
be recorded or queued. Users who must reconnect, the inbox backlog and dead letters are
reported for monitoring but never make the process unready: restarting it would not fix them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from fhir_gateway.errors import GatewayError
from fhir_gateway.jobs.inbox import pending_count
from fhir_gateway.jobs.queue import list_dead_letters
from fhir_gateway.store.base import Store

logger = logging.getLogger("fhir_gateway.health")

CHECK_TIMEOUT_SECONDS = 2.0
# The ids are listed for an operator to act on; beyond this many the count says enough.
MAX_LISTED_USERS = 50


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """{"status": "ok" | "unavailable", "checks": {"store": {"status": "ok"}, …}}."""
        return {"status": "ok" if self.ready else "unavailable", "checks": self.checks}


async def _reachable(check: Callable[[], Awaitable[object]], timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await check()
    except (GatewayError, RedisError, OSError, TimeoutError) as exc:
        logger.warning("readiness check failed: %s", type(exc).__name__)
        return False
    return True


async def check_readiness(
    store: Store,
    *,
    queue_ping: Callable[[], Awaitable[None]] | None,
    reauth_users: Callable[[], Awaitable[list[str]]],
    timeout: float = CHECK_TIMEOUT_SECONDS,
) -> Readiness:
    """Run the checks; `queue_ping` None = no Redis configured (the check is left out)."""
    checks: dict[str, dict[str, Any]] = {}
    store_ok = await _reachable(store.ping, timeout)
    checks["store"] = {"status": "ok" if store_ok else "unavailable"}
    ready = store_ok
    if queue_ping is not None:
        redis_ok = await _reachable(queue_ping, timeout)
        checks["redis"] = {"status": "ok" if redis_ok else "unavailable"}
        ready = ready and redis_ok
    if not store_ok:
        # Everything below is read from the store.
        for name in ("withings_reauth", "inbox_backlog", "dead_letters"):
            checks[name] = {"status": "unknown"}
        return Readiness(False, checks)
    try:
        async with asyncio.timeout(timeout):
            users = await reauth_users()
            pending = await pending_count(store)
            dead = len(await list_dead_letters(store))
    except (GatewayError, TimeoutError) as exc:
        logger.warning("readiness details unavailable: %s", type(exc).__name__)
        for name in ("withings_reauth", "inbox_backlog", "dead_letters"):
            checks[name] = {"status": "unknown"}
        return Readiness(ready, checks)
    checks["withings_reauth"] = {
        "status": "attention" if users else "ok",
        "count": len(users),
        "userids": users[:MAX_LISTED_USERS],
    }
    checks["inbox_backlog"] = {"status": "ok", "pending": pending}
    checks["dead_letters"] = {"status": "attention" if dead else "ok", "count": dead}
    return Readiness(ready, checks)
