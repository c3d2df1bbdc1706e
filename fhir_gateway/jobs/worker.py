"""Running the jobs: arq worker settings (`fhir-gateway worker`), and the in-process runner used
by `serve` without Redis. Both drive the same job functions with the same ctx.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import func
from arq.worker import run_worker as arq_run_worker
from redis.exceptions import RedisError

from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError, GatewayError
from fhir_gateway.jobs.coalesce import MemoryCoalescer, RedisCoalescer, SyncWindow, Timing
from fhir_gateway.jobs.inbox import NotificationIntake
from fhir_gateway.jobs.queue import (
    ArqQueue,
    InProcessQueue,
    JobContext,
    QueueUnavailable,
    dump_job,
    load_job,
)
from fhir_gateway.jobs.replay import MemoryReplayGuard, RedisReplayGuard
from fhir_gateway.jobs.tasks import (
    JobTuning,
    UserSync,
    job_context,
    reconcile_job,
    reconcile_period,
    reconcile_user_job,
    request_user_sync,
    sweep_inbox_job,
    sync_user_job,
)
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Store

logger = logging.getLogger("fhir_gateway.jobs")

SWEEP_EVERY_SECONDS = 60.0
_PERIOD_KEY = "fhir-gateway:reconcile-period:"


class WorkerServices(Protocol):
    """What the jobs need from the rest of the application (services.Services has both)."""

    @property
    def store(self) -> Store: ...

    @property
    def sync(self) -> UserSync: ...


@dataclass(frozen=True, slots=True)
class JobServices:
    """WorkerServices as plain values (tests, embedding)."""

    store: Store
    sync: UserSync


# Opens the store, the Withings client (with its budget) and the sync; closes them on exit.
ServicesFactory = Callable[[Settings], AbstractAsyncContextManager[WorkerServices]]


def tuning_for(settings: Settings) -> JobTuning:
    return JobTuning(reconcile_interval=float(settings.sync_interval_seconds))


def coalescer_timing(tuning: JobTuning) -> Timing:
    return Timing(lease=tuning.lease_refresh * 3)


# ---------------------------------------------------------------- arq


@dataclass(frozen=True, slots=True)
class CronFields:
    """arq cron options; None = every value."""

    hour: set[int] | None
    minute: set[int] | None
    second: set[int]


def reconcile_schedule(interval_seconds: int) -> CronFields:
    """arq cron fields for one run every `interval_seconds`, aligned on the clock.

    7200 → hours {0, 2, …, 22} at minute 0. An interval that does not divide the day evenly
    runs the cron every minute and lets the period guard admit one run per interval.
    """
    if interval_seconds % 3600 == 0 and 86_400 % interval_seconds == 0:
        hours = set(range(0, 24, interval_seconds // 3600))
        return CronFields(hours, {0}, {0})
    if interval_seconds % 60 == 0 and 3600 % interval_seconds == 0:
        return CronFields(None, set(range(0, 60, interval_seconds // 60)), {0})
    if interval_seconds < 60 and 60 % interval_seconds == 0:
        return CronFields(None, None, set(range(0, 60, interval_seconds)))
    return CronFields(None, None, {0})


async def reconcile_period_guard(ctx: JobContext) -> bool:
    """True for the first reconciliation of its period across all workers (SET NX EX).

    arq's unique cron id already dedupes workers that agree on the schedule; this also covers
    workers whose clocks disagree or an interval the cron cannot express exactly.
    """
    tuning: JobTuning = ctx["tuning"]
    redis: ArqRedis = ctx["redis"]
    interval = tuning.reconcile_interval
    period = reconcile_period(int(ctx["score"]), interval)
    claimed = await redis.set(
        f"{_PERIOD_KEY}{int(interval)}:{period}", "1", nx=True, ex=max(2, int(interval * 2))
    )
    return bool(claimed)


def worker_settings(
    settings: Settings,
    services_factory: ServicesFactory,
    *,
    tuning: JobTuning | None = None,
    metrics: GatewayMetrics | None = None,
) -> dict[str, Any]:
    """arq WorkerSettings (as a dict) for `fhir-gateway worker`."""
    if settings.redis_url is None:
        raise ConfigError(["REDIS_URL is required to run a worker"])
    tuning = tuning or tuning_for(settings)
    worker_metrics = metrics or GatewayMetrics()
    timing = coalescer_timing(tuning)

    async def on_startup(ctx: JobContext) -> None:
        stack = AsyncExitStack()
        services = await stack.enter_async_context(services_factory(settings))
        redis: ArqRedis = ctx["redis"]
        ctx["_services"] = stack
        queue = ArqQueue(redis)
        ctx.update(
            job_context(
                store=services.store,
                sync=services.sync,
                coalescer=RedisCoalescer(redis, timing=timing, job_alive=queue.job_alive),
                queue=queue,
                metrics=worker_metrics,
                tuning=tuning,
            )
        )
        ctx["reconcile_guard"] = reconcile_period_guard

    async def on_shutdown(ctx: JobContext) -> None:
        stack: AsyncExitStack | None = ctx.pop("_services", None)
        if stack is not None:
            await stack.aclose()

    # Results are not kept: a finished id must not block anything, and failures are recorded
    # as dead letters by the jobs themselves (reliability-anchors §1.4, keep_result).
    schedule = reconcile_schedule(int(tuning.reconcile_interval))
    return {
        "functions": [
            func(job, keep_result=0, timeout=tuning.job_timeout, max_tries=tuning.max_tries)
            for job in (sync_user_job, reconcile_user_job)
        ],
        "cron_jobs": [
            cron(
                reconcile_job,
                hour=schedule.hour,
                minute=schedule.minute,
                second=schedule.second,
                unique=True,
                timeout=tuning.job_timeout,
                max_tries=1,
            ),
            cron(sweep_inbox_job, second={30}, unique=True, timeout=tuning.job_timeout),
        ],
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "max_tries": tuning.max_tries,
        "job_timeout": tuning.job_timeout,
        "keep_result": 0,
        "job_serializer": dump_job,
        "job_deserializer": load_job,
    }


def run_worker(
    settings: Settings,
    services_factory: ServicesFactory | None = None,
    *,
    metrics: GatewayMetrics | None = None,
) -> None:
    """`fhir-gateway worker`: run an arq worker until SIGINT/SIGTERM.

    The services default to `services.open_services(worker=True)`: the web process's wiring,
    minus the in-process job runtime (this process is where the jobs run).
    """
    if settings.redis_url is None:
        raise ConfigError(["REDIS_URL is required to run a worker"])
    worker_metrics = metrics or GatewayMetrics()
    if services_factory is None:
        services_factory = worker_services_factory(worker_metrics)
    arq_run_worker(worker_settings(settings, services_factory, metrics=worker_metrics))


def worker_services_factory(metrics: GatewayMetrics) -> ServicesFactory:
    """`open_services` as a worker process needs it, counting into the worker's metrics."""
    # Imported here: services.py builds the job runtime from this module.
    from fhir_gateway.services import open_services

    def factory(settings: Settings) -> AbstractAsyncContextManager[WorkerServices]:
        return open_services(settings, worker=True, metrics=metrics)

    return factory


# ---------------------------------------------------------------- the web process side


class JobRuntime(Protocol):
    """What the web process holds: where notifications go, started and stopped by the lifespan."""

    metrics: GatewayMetrics

    def intake(self) -> NotificationIntake: ...

    async def ping(self) -> None:
        """Raise QueueUnavailable when the queue (Redis) cannot be reached (readiness)."""
        ...

    async def request_sync(self, userid: str, window: SyncWindow | None) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class RedisJobClient:
    """The web process with Redis: notifications coalesce in Redis and run on workers."""

    def __init__(
        self, settings: Settings, store: Store, *, metrics: GatewayMetrics | None = None
    ) -> None:
        if settings.redis_url is None:
            raise ConfigError(["REDIS_URL is required for the Redis job client"])
        self.metrics = metrics or GatewayMetrics()
        self.queue = ArqQueue.from_url(settings.redis_url)
        self.redis: ArqRedis = self.queue.redis
        self.coalescer = RedisCoalescer(
            self.redis,
            timing=coalescer_timing(tuning_for(settings)),
            job_alive=self.queue.job_alive,
        )
        self.replays = RedisReplayGuard(self.redis)
        self._store = store

    def intake(self) -> NotificationIntake:
        return NotificationIntake(self._store, self.request_sync, replays=self.replays)

    async def request_sync(self, userid: str, window: SyncWindow | None) -> bool:
        return await request_user_sync(self.coalescer, self.queue, userid, window)

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"redis unreachable: {type(exc).__name__}") from exc

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.queue.close()


class InProcessRunner:
    """`serve` without Redis: the same jobs as asyncio tasks, plus the periodic reconciliation
    and inbox sweeper loops that arq's cron runs on workers."""

    def __init__(
        self,
        store: Store,
        sync: UserSync,
        *,
        metrics: GatewayMetrics | None = None,
        tuning: JobTuning | None = None,
        sweep_every: float = SWEEP_EVERY_SECONDS,
    ) -> None:
        self.tuning = tuning or JobTuning()
        self.metrics = metrics or GatewayMetrics()
        self.queue = InProcessQueue(
            max_tries=self.tuning.max_tries, job_timeout=self.tuning.job_timeout
        )
        self.coalescer = MemoryCoalescer(
            coalescer_timing(self.tuning), job_alive=self.queue.job_alive
        )
        self.queue.context.update(
            job_context(
                store=store,
                sync=sync,
                coalescer=self.coalescer,
                queue=self.queue,
                metrics=self.metrics,
                tuning=self.tuning,
            )
        )
        self.replays = MemoryReplayGuard()
        self._store = store
        self._sweep_every = sweep_every
        self._loops: list[asyncio.Task[None]] = []

    def intake(self) -> NotificationIntake:
        return NotificationIntake(self._store, self.request_sync, replays=self.replays)

    async def request_sync(self, userid: str, window: SyncWindow | None) -> bool:
        return await request_user_sync(self.coalescer, self.queue, userid, window)

    async def ping(self) -> None:
        return None  # the queue is this process

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._reconcile_forever(), name="reconcile-loop"),
            asyncio.create_task(self._sweep_forever(), name="inbox-sweep-loop"),
        ]

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.queue.close()

    async def _reconcile_forever(self) -> None:
        interval = self.tuning.reconcile_interval
        while True:
            now = time.time()
            boundary = (now // interval + 1) * interval
            await asyncio.sleep(boundary - now)
            await self._guarded(reconcile_job, {"score": int(boundary * 1000)})

    async def _sweep_forever(self) -> None:
        # The coalescer state died with the previous process: re-request what it had taken.
        await self._guarded(sweep_inbox_job, {"requeue_all_enqueued": True})
        while True:
            await asyncio.sleep(self._sweep_every)
            await self._guarded(sweep_inbox_job, {})

    async def _guarded(self, job: Callable[[JobContext], Any], extra: dict[str, Any]) -> None:
        try:
            await job({**self.queue.context, **extra})
        except (GatewayError, RedisError, OSError) as exc:
            # A loop must outlive one bad run; the next tick tries again.
            logger.warning("%s failed: %s", getattr(job, "__name__", "job"), type(exc).__name__)


def make_job_runtime(
    settings: Settings,
    store: Store,
    sync: UserSync,
    *,
    metrics: GatewayMetrics | None = None,
    worker: bool = False,
) -> JobRuntime:
    """Redis-backed when REDIS_URL is set (workers run the jobs), else in this process.

    `worker`: for an arq worker process, which only ever enqueues through Redis (a backfill,
    a follow-up) and must never run a second, in-process copy of the jobs and loops.
    """
    if settings.redis_url is not None or worker:
        return RedisJobClient(settings, store, metrics=metrics)
    return InProcessRunner(store, sync, metrics=metrics, tuning=tuning_for(settings))
