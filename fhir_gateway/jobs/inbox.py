"""The notification inbox: every accepted Withings notification is written here before anything
else, so that a Redis outage never loses one (reliability-anchors §1.3.5 "fast ack, durable
first"); the sweeper re-requests what the queue did not take, the sync job removes what it served.

Record kind "inbox", key "{userid}:{digest of the payload}" so that Withings' retries and replays
of one notification land on one record (§1.3.4, replay protection without ids):
    {"userid": "12345", "appli": 1, "startdate": 1530576000, "enddate": 1530698753,
     "date": null, "deviceid": null, "action": null,
     "status": "pending" | "enqueued", "received_at": 1700000000.123, "enqueued_at": null}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from fhir_gateway.errors import GatewayError, VersionConflict
from fhir_gateway.jobs.coalesce import SyncWindow, covers
from fhir_gateway.jobs.replay import ReplayGuard
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Record, Store

logger = logging.getLogger("fhir_gateway.jobs")

INBOX_KIND = "inbox"
PENDING = "pending"
ENQUEUED = "enqueued"
# Withings `date` is a day in the user's time zone (UTC-12 … UTC+14): widen the UTC day by that.
_DAY = 86_400
_ZONE_BEFORE = 14 * 3600
_ZONE_AFTER = 12 * 3600
_SWEEP_LIMIT = 5000

RequestSync = Callable[[str, SyncWindow | None], Awaitable[bool]]

# Notification categories that announce data we sync (withings-api §5.3): measures,
# temperature, blood pressure, activity, sleep, ECG.
SYNCED_APPLIS = frozenset({1, 2, 4, 16, 44, 54})
# The user-profile category: `action` unlink/delete means the account is gone (no data to sync).
PROFILE_APPLI = 46


@dataclass(frozen=True, slots=True)
class Notification:
    """A validated Withings notification (withings-api §5.4); it carries no data, only a hint."""

    userid: str
    appli: int
    startdate: int | None = None
    enddate: int | None = None
    date: str | None = None  # "YYYY-MM-DD" or epoch seconds as text, as Withings sent it
    deviceid: str | None = None
    action: str | None = None

    def window(self) -> SyncWindow:
        """Where to re-fetch: [startdate, enddate], else the day `date` names, else incremental."""
        if self.startdate is not None and self.enddate is not None:
            return SyncWindow(self.appli, self.startdate, self.enddate)
        if self.date is not None:
            if self.date.isdigit():
                day_start = int(self.date) - int(self.date) % _DAY
            else:
                day_start = int(
                    datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
                )
            return SyncWindow(self.appli, day_start - _ZONE_BEFORE, day_start + _DAY + _ZONE_AFTER)
        return SyncWindow(self.appli, None, None)

    def inbox_key(self) -> str:
        digest = hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:32]
        return f"{self.userid}:{digest}"

    @classmethod
    def from_record(cls, record: Record) -> Notification:
        data = record.data
        return cls(
            userid=str(data["userid"]),
            appli=int(data["appli"]),
            startdate=data.get("startdate"),
            enddate=data.get("enddate"),
            date=data.get("date"),
            deviceid=data.get("deviceid"),
            action=data.get("action"),
        )


async def record_notification(
    store: Store, notification: Notification, *, now: Callable[[], float] = time.time
) -> Record:
    """Write (or refresh) the notification's inbox record as pending."""
    data: dict[str, Any] = {
        **asdict(notification),
        "status": PENDING,
        "received_at": now(),
        "enqueued_at": None,
    }
    return await store.put_record(INBOX_KIND, notification.inbox_key(), data)


async def mark_enqueued(
    store: Store, record: Record, *, now: Callable[[], float] = time.time
) -> bool:
    """pending → enqueued, unless the record changed meanwhile (a newer copy stays pending)."""
    data = {**record.data, "status": ENQUEUED, "enqueued_at": now()}
    try:
        await store.put_record(INBOX_KIND, record.key, data, expected_version=record.version)
    except VersionConflict:
        return False
    return True


async def complete_user_inbox(
    store: Store,
    userid: str,
    claimed_at: float,
    served: Sequence[SyncWindow] | None = None,
) -> float | None:
    """Remove the user's records received up to `claimed_at` that the sync served: whose
    window lies in `served` (None: all of them, e.g. the user must reconnect anyway).

    Returns the oldest removed `received_at`, for the lag metric. Records received later stay:
    the coalescer's follow-up sync serves them. So do records whose window the sync did not
    re-fetch: their window was lost with a Redis restart (the coalescer's state), and only a
    re-fetch of it can see a deletion (withings-api §8.6); the sweeper asks for it again.
    """
    oldest: float | None = None
    for record in await store.list_records(INBOX_KIND, where={"userid": userid}):
        received_at = float(record.data.get("received_at", 0.0))
        if received_at > claimed_at:
            continue
        if served is not None and not covers(served, Notification.from_record(record).window()):
            continue
        if await store.delete_record(INBOX_KIND, record.key):
            oldest = received_at if oldest is None else min(oldest, received_at)
    return oldest


async def pending_count(store: Store, limit: int = _SWEEP_LIMIT) -> int:
    """Notifications recorded but not yet handed to the queue (capped at `limit`)."""
    return len(await store.list_records(INBOX_KIND, where={"status": PENDING}, limit=limit))


class NotificationIntake:
    """What the webhook calls for a notification from a known user: inbox first, then request
    a sync; the answer to Withings never waits on Redis for more than `enqueue_timeout`."""

    def __init__(
        self,
        store: Store,
        request_sync: RequestSync,
        *,
        replays: ReplayGuard | None = None,
        enqueue_timeout: float = 1.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._request_sync = request_sync
        self._replays = replays
        self._enqueue_timeout = enqueue_timeout
        self._now = now

    async def __call__(self, notification: Notification) -> str:
        """Returns the outcome: "enqueued", "inbox_only" when the queue was unreachable,
        "replay" for a copy of a notification handled within the replay window, or
        "ignored_appli" for a category that announces no data we sync.

        Raises StoreError when the inbox write fails: the webhook then answers 5xx so that
        Withings retries (its schedule spans ~5 h, withings-api §5.5).
        """
        if notification.appli not in SYNCED_APPLIS:
            return "ignored_appli"  # nothing to fetch (e.g. a profile change)
        key = notification.inbox_key()
        if self._replays is not None and await self._replays.seen(key):
            return "replay"
        record = await record_notification(self._store, notification, now=self._now)
        # Only now: had the write failed, Withings' retry of this copy must not be a "replay".
        # Copies racing past `seen` meanwhile only merge into the same coalesced sync.
        if self._replays is not None:
            await self._replays.remember(key)
        try:
            async with asyncio.timeout(self._enqueue_timeout):
                await self._request_sync(notification.userid, notification.window())
        except (GatewayError, RedisError, OSError, TimeoutError) as exc:
            # The inbox holds it; the sweeper requests the sync once the queue is back.
            logger.warning(
                "notification kept in the inbox, queue unavailable: %s", type(exc).__name__
            )
            return "inbox_only"
        await mark_enqueued(self._store, record, now=self._now)
        return "enqueued"


@dataclass(frozen=True, slots=True)
class SweepResult:
    requested: int = 0
    unavailable: int = 0
    expired: int = 0
    backlog: int = 0


async def sweep_inbox(
    store: Store,
    request_sync: RequestSync,
    *,
    stale_after: float,
    expire_after: float,
    requeue_all_enqueued: bool = False,
    metrics: GatewayMetrics | None = None,
    now: Callable[[], float] = time.time,
) -> SweepResult:
    """Request syncs for pending records, and again for records enqueued long ago (a job lost
    with a Redis restart, or dead-lettered); drop records older than `expire_after`, which the
    periodic reconciliation has covered by then.

    `requeue_all_enqueued`: the in-process queue lost its state with the last process.
    """
    requested = unavailable = expired = 0
    moment = now()
    records = await store.list_records(INBOX_KIND, limit=_SWEEP_LIMIT)
    queue_down = False
    for record in records:
        received_at = float(record.data.get("received_at", 0.0))
        if moment - received_at > expire_after:
            await store.delete_record(INBOX_KIND, record.key)
            expired += 1
            continue
        status = record.data.get("status")
        enqueued_at = record.data.get("enqueued_at") or 0.0
        due = status == PENDING or (
            status == ENQUEUED
            and (requeue_all_enqueued or moment - float(enqueued_at) > stale_after)
        )
        if not due:
            continue
        if queue_down:
            unavailable += 1
            continue
        notification = Notification.from_record(record)
        try:
            await request_sync(notification.userid, notification.window())
        except (GatewayError, RedisError, OSError, TimeoutError) as exc:
            logger.warning("inbox sweep: queue unavailable (%s)", type(exc).__name__)
            queue_down = True
            unavailable += 1
            continue
        await mark_enqueued(store, record, now=now)
        requested += 1
    result = SweepResult(requested, unavailable, expired, len(records) - expired)
    if metrics is not None:
        metrics.inbox_backlog.set(result.backlog)
    return result
