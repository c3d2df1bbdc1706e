"""The job queue seam: arq over Redis for several processes, asyncio tasks for one process.

Both refuse a job id that is already queued or running (arq's `_job_id` semantics,
reliability-anchors §1.4), retry a job that raises `arq.Retry` after its defer, and give every
job function the same `ctx` dict. A job given up for good becomes a dead-letter record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias, TypeVarTuple

from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from fhir_gateway.errors import GatewayError, VersionConflict
from fhir_gateway.store.base import Record, Store

logger = logging.getLogger("fhir_gateway.jobs")

JobContext: TypeAlias = dict[str, Any]
JobFunction: TypeAlias = Callable[..., Awaitable[object]]
Ts = TypeVarTuple("Ts")

DEAD_LETTERS_KIND = "dead_letters"
DEFAULT_MAX_TRIES = 5
DEFAULT_JOB_TIMEOUT = 300.0
_MAX_ERROR_CHARS = 500


class QueueUnavailable(GatewayError):
    """The queue (Redis) cannot be reached; whatever was to be enqueued must wait."""

    status, issue_code = 503, "transient"


class JobQueue(Protocol):
    async def enqueue(
        self,
        job_id: str,
        job: Callable[[JobContext, *Ts], Awaitable[object]],
        *args: *Ts,
    ) -> bool:
        """Queue `job(ctx, *args)` under `job_id`; False when that id is queued or running.

        Raise QueueUnavailable when the queue cannot be reached.
        """
        ...

    async def job_alive(self, job_id: str) -> bool:
        """True while the job is queued, deferred for a retry or running."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- arq


def dump_job(payload: dict[str, Any]) -> bytes:
    """JSON instead of arq's default pickle: a compromised Redis must not mean code execution
    on workers (reliability-anchors §1.4, serialization); job arguments are only ids anyway."""
    return json.dumps(payload, default=str).encode()


def load_job(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def arq_redis(redis_url: str) -> ArqRedis:
    """An ArqRedis that connects lazily (no PING at creation), so the web process starts and
    keeps answering webhooks while Redis is down, and reconnects by itself when it returns."""
    pool = ConnectionPool.from_url(
        redis_url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=30
    )
    return ArqRedis(connection_pool=pool, job_serializer=dump_job, job_deserializer=load_job)


# arq's enqueue_job (WATCH, EXISTS, MULTI/PSETEX/ZADD/EXEC: three round trips) as one script:
# the same keys, the same refusal of an id that is queued, running or has a result. The webhook's
# ack waits on it. KEYS: job key, result key, queue; ARGV: expiry ms, job, score, job id.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
    return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


class ArqQueue:
    """Jobs in Redis, run by `fhir-gateway worker` processes."""

    def __init__(self, redis: ArqRedis, *, owns_connection: bool = False) -> None:
        self.redis = redis
        self._owns_connection = owns_connection
        self._enqueue = redis.register_script(_ENQUEUE)

    @classmethod
    def from_url(cls, redis_url: str) -> ArqQueue:
        return cls(arq_redis(redis_url), owns_connection=True)

    async def enqueue(
        self,
        job_id: str,
        job: Callable[[JobContext, *Ts], Awaitable[object]],
        *args: *Ts,
    ) -> bool:
        enqueued_at = timestamp_ms()
        payload = serialize_job(
            job.__name__, args, {}, None, enqueued_at, serializer=self.redis.job_serializer
        )
        try:
            queued = await self._enqueue(
                keys=[
                    job_key_prefix + job_id,
                    result_key_prefix + job_id,
                    self.redis.default_queue_name,
                ],
                args=[self.redis.expires_extra_ms, payload, enqueued_at, job_id],
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot enqueue {job.__name__}: {type(exc).__name__}") from exc
        return bool(queued)

    async def job_alive(self, job_id: str) -> bool:
        # arq keeps the job key from enqueue until the job finishes for good (retries too).
        try:
            return bool(await self.redis.exists(job_key_prefix + job_id))
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"cannot look up a job: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._owns_connection:
            await self.redis.aclose(close_connection_pool=True)


# ---------------------------------------------------------------- in-process


class InProcessQueue:
    """Jobs as asyncio tasks of this process (embedded mode: `serve` without Redis).

    `context` is the ctx every job receives (filled once the services exist); each run adds
    job_id, job_try, max_tries and score as arq does.
    """

    def __init__(
        self,
        context: JobContext | None = None,
        *,
        max_tries: int = DEFAULT_MAX_TRIES,
        job_timeout: float = DEFAULT_JOB_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.context: JobContext = {} if context is None else context
        self._max_tries = max_tries
        self._job_timeout = job_timeout
        self._sleep = sleep
        self._active: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def active_ids(self) -> set[str]:
        return set(self._active)

    async def job_alive(self, job_id: str) -> bool:
        return job_id in self._active

    async def enqueue(
        self,
        job_id: str,
        job: Callable[[JobContext, *Ts], Awaitable[object]],
        *args: *Ts,
    ) -> bool:
        if self._closed:
            raise QueueUnavailable("the in-process queue is closed")
        if job_id in self._active:
            return False
        self._active[job_id] = asyncio.create_task(self._run(job_id, job, args), name=job_id)
        return True

    async def join(self) -> None:
        """Wait until no job is queued or running (follow-ups enqueued meanwhile included)."""
        while self._active:
            await asyncio.gather(*self._active.values(), return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job_id: str, job: JobFunction, args: tuple[Any, ...]) -> None:
        name = getattr(job, "__name__", "job")
        try:
            job_try = 1
            while True:
                ctx = {
                    **self.context,
                    "job_id": job_id,
                    "job_try": job_try,
                    "max_tries": self._max_tries,
                    "score": int(time.time() * 1000),
                }
                try:
                    async with asyncio.timeout(self._job_timeout):
                        await job(ctx, *args)
                    return
                except Retry as retry:
                    if job_try >= self._max_tries:
                        # arq drops such a job with "max retries exceeded"; here it is recorded.
                        error = RuntimeError(f"max {self._max_tries} tries exceeded")
                        await self._dead_letter(name, job_id, args, job_try, error)
                        return
                    await self._sleep((retry.defer_score or 0) / 1000)
                    job_try += 1
                except Exception as exc:
                    # Same as arq: any other exception fails the job for good (logged there too).
                    logger.exception("job %s failed: %s", job_id, type(exc).__name__)
                    await self._dead_letter(name, job_id, args, job_try, exc)
                    return
        finally:
            if self._active.get(job_id) is asyncio.current_task():
                del self._active[job_id]

    async def _dead_letter(
        self, name: str, job_id: str, args: tuple[Any, ...], tries: int, error: BaseException
    ) -> None:
        store: Store | None = self.context.get("store")
        if store is None:
            return
        userid = str(args[0]) if args else None
        await record_dead_letter(store, job=name, userid=userid, error=error, tries=tries)


# ---------------------------------------------------------------- dead letters


async def record_dead_letter(
    store: Store,
    *,
    job: str,
    userid: str | None,
    error: BaseException,
    tries: int,
    now: Callable[[], float] = time.time,
) -> Record:
    """Record a job given up on; one record per (job, user), counting repeats.

    Only the error class and its message are kept: our errors never carry tokens
    (errors.WithingsError), and job arguments are ids.
    """
    key = f"{job}:{userid}" if userid is not None else job
    message = str(error)[:_MAX_ERROR_CHARS]
    for _attempt in range(5):
        current = await store.get_record(DEAD_LETTERS_KIND, key)
        moment = now()
        data: dict[str, Any] = {
            "job": job,
            "userid": userid,
            "error_class": type(error).__name__,
            "error": message,
            "tries": tries,
            "count": 1 if current is None else int(current.data.get("count", 0)) + 1,
            "first_failed_at": moment if current is None else current.data["first_failed_at"],
            "last_failed_at": moment,
        }
        try:
            return await store.put_record(
                DEAD_LETTERS_KIND,
                key,
                data,
                expected_version=0 if current is None else current.version,
            )
        except VersionConflict:
            continue  # another worker recorded the same failure at the same moment
    return await store.put_record(DEAD_LETTERS_KIND, key, data)


async def list_dead_letters(store: Store, limit: int = 1000) -> list[Record]:
    """Dead letters, for `fhir-gateway jobs`."""
    return await store.list_records(DEAD_LETTERS_KIND, limit=limit)


def describe_dead_letter(record: Record) -> str:
    """One line for a terminal, e.g.
    "sync_user_job user=12345 tries=5 times=2 last=2026-11-02T10:00:00Z WithingsTransient: …"."""
    data = record.data
    last = datetime.fromtimestamp(float(data.get("last_failed_at", 0.0)), UTC)
    return (
        f"{data.get('job')} user={data.get('userid') or '-'} tries={data.get('tries')} "
        f"times={data.get('count')} last={last.strftime('%Y-%m-%dT%H:%M:%SZ')} "
        f"{data.get('error_class')}: {data.get('error')}"
    )
