"""Job functions (arq style: `ctx` first) and the UserSync seam they drive.

ctx keys: "sync" (UserSync), "store" (Store), "coalescer" (Coalescer), "queue" (JobQueue),
"metrics" (GatewayMetrics), "tuning" (JobTuning), optional "reconcile_guard"; per run arq adds
"job_id", "job_try" and "score" (the in-process queue does the same).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from arq import Retry
from redis.exceptions import RedisError

from fhir_gateway.errors import (
    GatewayError,
    StoreError,
    WithingsAuthError,
    WithingsInvalidGrant,
    WithingsRateLimited,
    WithingsTransient,
)
from fhir_gateway.jobs.coalesce import Coalescer, SyncWindow
from fhir_gateway.jobs.inbox import complete_user_inbox, sweep_inbox
from fhir_gateway.jobs.queue import (
    JobContext,
    JobQueue,
    QueueUnavailable,
    record_dead_letter,
)
from fhir_gateway.locks import LockUnavailable
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Store

__all__ = [
    "JobTuning",
    "SyncWindow",
    "UserSync",
    "job_context",
    "reconcile_job",
    "reconcile_user_job",
    "request_user_sync",
    "revive_stalled_syncs",
    "sweep_inbox_job",
    "sync_user_job",
]

logger = logging.getLogger("fhir_gateway.jobs")
T = TypeVar("T")

# Failures that pass: retried with backoff. An access token refused (WithingsAuthError) is
# retried too, since the next try refreshes it; a refused refresh (WithingsInvalidGrant) or a
# user who must reconnect (NeedsReauth, a plain GatewayError) is permanent, as is any other
# GatewayError (invalid params, unauthorized service): straight to a dead letter.
RETRYABLE: tuple[type[BaseException], ...] = (
    WithingsTransient,
    WithingsRateLimited,
    WithingsAuthError,
    StoreError,
    LockUnavailable,
    QueueUnavailable,
    TimeoutError,
    RedisError,
    ConnectionError,
)
PERMANENT: tuple[type[BaseException], ...] = (WithingsInvalidGrant,)

FailureKind = Literal["retry", "permanent", "bug"]


def classify_failure(error: BaseException) -> FailureKind:
    if isinstance(error, PERMANENT):
        return "permanent"
    if isinstance(error, RETRYABLE):
        return "retry"
    if isinstance(error, GatewayError):
        return "permanent"
    return "bug"


class UserSync(Protocol):
    """The per-user sync the jobs drive (implemented by the ingestion code)."""

    async def sync_user(self, userid: str, windows: Sequence[SyncWindow]) -> None:
        """Incremental sync from the stored cursor, plus re-fetch of `windows` with deletion
        reconciliation. Raises WithingsTransient/WithingsRateLimited (or StoreError) on a
        temporary failure, another GatewayError when retrying cannot help."""
        ...

    async def reconcile_user(self, userid: str) -> None:
        """Periodic: incremental + deletions + subscription repair."""
        ...

    async def connected_users(self) -> list[str]:
        """Users that are not needs_reauth."""
        ...


@dataclass(frozen=True, slots=True)
class JobTuning:
    max_tries: int = 5
    job_timeout: float = 300.0
    retry_base_delay: float = 10.0
    retry_max_delay: float = 600.0
    # The running lease is refreshed every third of its length (coalesce.Timing.lease).
    lease_refresh: float = 20.0
    reconcile_interval: float = 7200.0
    inbox_stale_after: float = 3600.0
    inbox_expire_after: float = 2 * 86_400.0

    @property
    def sync_timeout(self) -> float:
        """Inside arq's job timeout, so that a slow sync fails as retryable, not for good."""
        return self.job_timeout * 0.9


def job_context(
    *,
    store: Store,
    sync: UserSync,
    coalescer: Coalescer,
    queue: JobQueue,
    metrics: GatewayMetrics,
    tuning: JobTuning,
) -> JobContext:
    return {
        "store": store,
        "sync": sync,
        "coalescer": coalescer,
        "queue": queue,
        "metrics": metrics,
        "tuning": tuning,
    }


def backoff(job_try: int, tuning: JobTuning, error: BaseException) -> float:
    """Exponential with jitter; never sooner than Withings' own 601 wait hint."""
    delay = min(tuning.retry_max_delay, tuning.retry_base_delay * 2.0 ** max(0, job_try - 1))
    delay *= 0.5 + random.random() / 2  # jitter spreads the retries of many users
    if isinstance(error, WithingsRateLimited) and error.wait_seconds is not None:
        delay = max(delay, error.wait_seconds)
    return delay


async def request_user_sync(
    coalescer: Coalescer, queue: JobQueue, userid: str, window: SyncWindow | None
) -> bool:
    """Ask for a sync of `userid` covering `window`; True if a job was enqueued (False: merged
    into a queued or running sync). Raises QueueUnavailable when Redis cannot be reached.

    Cancelled anywhere (the intake's timeout, SIGTERM), the user is left queued on a job id
    that the next request or the sweeper finds missing and enqueues (coalesce.on_request).
    """
    try:
        job_id = await coalescer.request(userid, window)
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(f"coalescer unavailable: {type(exc).__name__}") from exc
    if job_id is None:
        return False
    await queue.enqueue(job_id, sync_user_job, userid)
    return True


async def _shielded(step: Coroutine[Any, Any, T]) -> T:
    """Await `step` to completion even if the caller is cancelled meanwhile (the caller still
    sees its CancelledError); an error it raises after that is logged, not lost."""
    task = asyncio.ensure_future(step)
    task.add_done_callback(_log_orphaned_failure)
    return await asyncio.shield(task)


def _log_orphaned_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a shielded queue step failed: %s", type(task.exception()).__name__)


async def revive_stalled_syncs(coalescer: Coalescer, queue: JobQueue) -> int:
    """Enqueue again the jobs of users queued on a job that never reached the queue (or left
    it); how many. The sweeper runs it, so such a user waits a sweep, not the queued timeout."""
    revived = 0
    for userid in await coalescer.queued_users():
        job_id = await coalescer.revive(userid)
        if job_id is not None and await queue.enqueue(job_id, sync_user_job, userid):
            logger.warning("sync job of a user never reached the queue; enqueued it again")
            revived += 1
    return revived


@asynccontextmanager
async def _keep_lease(coalescer: Coalescer, userid: str, every: float) -> AsyncIterator[None]:
    async def refresh_forever() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await coalescer.refresh(userid)
            except (RedisError, OSError):
                logger.warning("lease refresh failed; retrying at the next beat")

    keeper = asyncio.create_task(refresh_forever())
    try:
        yield
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def _give_up(
    ctx: JobContext, job: str, userid: str | None, error: BaseException, outcome: str
) -> None:
    metrics: GatewayMetrics = ctx["metrics"]
    await record_dead_letter(
        ctx["store"], job=job, userid=userid, error=error, tries=int(ctx.get("job_try", 1))
    )
    metrics.dead_letter(job)
    metrics.job(job, outcome)


def _exhausted(ctx: JobContext) -> bool:
    tuning: JobTuning = ctx["tuning"]
    return int(ctx.get("job_try", 1)) >= tuning.max_tries


async def sync_user_job(ctx: JobContext, userid: str) -> None:
    """Sync one user: claim the coalesced windows, run the sync, release, follow up if needed."""
    job = "sync_user_job"
    coalescer: Coalescer = ctx["coalescer"]
    metrics: GatewayMetrics = ctx["metrics"]
    tuning: JobTuning = ctx["tuning"]
    job_id: str | None = ctx.get("job_id")
    windows = await coalescer.start(userid)
    if windows is None:
        # Another live sync holds the user; start() marked it dirty so that one follows up.
        metrics.job(job, "busy")
        return
    # Taken after the claim, before any fetch: an inbox record received up to here announces
    # data that exists before this sync reads Withings, so if its window is one the sync
    # re-fetches (inbox.complete_user_inbox), the sync serves it. Records whose window was
    # requested after the claim are not covered and stay for the follow-up sync.
    claimed_at = time.time()
    try:
        async with _keep_lease(coalescer, userid, tuning.lease_refresh):
            async with asyncio.timeout(tuning.sync_timeout):
                await ctx["sync"].sync_user(userid, windows)
    except asyncio.CancelledError:
        # Worker shutdown: arq runs the job again and the windows must be there for it. After
        # arq's job timeout it does not: the user stays queued on this job's id, which the
        # next request or the sweeper then finds gone and enqueues again.
        await _shielded(coalescer.finish(userid, ok=False, retrying=True, job_id=job_id))
        raise
    except Exception as exc:
        kind = classify_failure(exc)
        if kind == "retry":
            exhausted = _exhausted(ctx)
            await coalescer.finish(userid, ok=False, retrying=not exhausted, job_id=job_id)
            if not exhausted:
                metrics.job(job, "retry")
                raise Retry(defer=backoff(int(ctx.get("job_try", 1)), tuning, exc)) from exc
            # The inbox keeps the user's records; the sweeper asks again after inbox_stale_after.
            await _give_up(ctx, job, userid, exc, "dead_letter")
            return
        await coalescer.finish(userid, ok=False, retrying=False)
        if kind == "bug":
            logger.exception("sync of a user failed unexpectedly")
            await _give_up(ctx, job, userid, exc, "error")
            return
        # Retrying cannot help (e.g. the user must consent again): the windows stay with the
        # coalescer for the sync after re-consent; the inbox records are done with.
        await complete_user_inbox(ctx["store"], userid, claimed_at)
        await _give_up(ctx, job, userid, exc, "failed")
        return
    # Release and follow-up enqueue back to back, shielded from arq's timeout and shutdown; a
    # follow-up lost anyway (SIGKILL in between) is revived by the next request or sweep.
    follow_up = await _shielded(coalescer.finish(userid, ok=True, job_id=job_id))
    if follow_up is not None:
        try:
            await _shielded(ctx["queue"].enqueue(follow_up, sync_user_job, userid))
        except QueueUnavailable:
            # Not lost: the user is queued on the follow-up's id; the sweeper enqueues it.
            logger.warning("follow-up sync not enqueued, queue unavailable; the sweeper will")
    oldest = await complete_user_inbox(ctx["store"], userid, claimed_at, windows)
    if oldest is not None:
        metrics.notification_lag.set(max(0.0, time.time() - oldest))
    metrics.job(job, "ok")


def reconcile_period(score_ms: int, interval: float) -> int:
    """The period a reconciliation run belongs to, from its scheduled time (not the clock of
    whichever worker picked it up)."""
    return int(score_ms // int(interval * 1000))


ReconcileGuard = Callable[[JobContext], Awaitable[bool]]


async def reconcile_job(ctx: JobContext) -> None:
    """Periodic: one reconcile_user_job per connected user, at most once per period.

    Fanned out as separate jobs so each user gets its own timeout and retries, and a worker
    killed mid-way loses one user's run, not everyone's.
    """
    metrics: GatewayMetrics = ctx["metrics"]
    tuning: JobTuning = ctx["tuning"]
    guard: ReconcileGuard | None = ctx.get("reconcile_guard")
    if guard is not None and not await guard(ctx):
        metrics.job("reconcile_job", "skipped")
        return
    period = reconcile_period(
        int(ctx.get("score") or time.time() * 1000), tuning.reconcile_interval
    )
    queue: JobQueue = ctx["queue"]
    for userid in await ctx["sync"].connected_users():
        await queue.enqueue(f"reconcile:{userid}:{period}", reconcile_user_job, userid)
    metrics.job("reconcile_job", "ok")


async def reconcile_user_job(ctx: JobContext, userid: str) -> None:
    job = "reconcile_user_job"
    metrics: GatewayMetrics = ctx["metrics"]
    tuning: JobTuning = ctx["tuning"]
    try:
        async with asyncio.timeout(tuning.sync_timeout):
            await ctx["sync"].reconcile_user(userid)
    except Exception as exc:
        kind = classify_failure(exc)
        if kind == "retry" and not _exhausted(ctx):
            metrics.job(job, "retry")
            raise Retry(defer=backoff(int(ctx.get("job_try", 1)), tuning, exc)) from exc
        if kind == "bug":
            logger.exception("reconciliation of a user failed unexpectedly")
        outcome = {"retry": "dead_letter", "permanent": "failed", "bug": "error"}[kind]
        await _give_up(ctx, job, userid, exc, outcome)
        return
    metrics.job(job, "ok")


async def sweep_inbox_job(ctx: JobContext) -> None:
    """Every minute: request syncs for inbox records the queue did not take (Redis was down)."""
    tuning: JobTuning = ctx["tuning"]
    coalescer: Coalescer = ctx["coalescer"]
    queue: JobQueue = ctx["queue"]

    async def request(userid: str, window: SyncWindow | None) -> bool:
        return await request_user_sync(coalescer, queue, userid, window)

    try:
        await revive_stalled_syncs(coalescer, queue)
    except (QueueUnavailable, RedisError, OSError) as exc:
        logger.warning("stalled syncs not revived, queue unavailable: %s", type(exc).__name__)
    await sweep_inbox(
        ctx["store"],
        request,
        stale_after=tuning.inbox_stale_after,
        expire_after=tuning.inbox_expire_after,
        requeue_all_enqueued=bool(ctx.get("requeue_all_enqueued", False)),
        metrics=ctx["metrics"],
    )
    ctx["metrics"].job("sweep_inbox_job", "ok")
