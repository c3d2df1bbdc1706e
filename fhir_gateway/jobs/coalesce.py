"""Per-user coalescing of sync requests: at most one sync per user, no notification dropped.

arq refuses a job id that is queued or running (reliability-anchors §1.4, "busy-job drop"), so a
notification arriving while `sync:{user}` runs would be lost. Instead each user has a small state
machine — idle → queued → running → running+dirty — whose pending windows are merged; a sync
claims them when it starts and gives them back if it fails. The running state carries a lease
refreshed while the sync runs, so a worker killed with SIGKILL never leaves the user stuck.

The transitions are pure functions on `UserSyncState`; `MemoryCoalescer` (one process) and
`RedisCoalescer` (every process, WATCH/MULTI on one key per user) only store the state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

Phase = Literal["idle", "queued", "running"]
T = TypeVar("T")

# A running sync refreshes its lease every third of it; a holder silent for a whole lease is dead.
DEFAULT_LEASE_SECONDS = 60.0
# How long a "queued" user waits for its job to start before a new request enqueues another one
# (covers a lost enqueue: the state said queued but the job never reached the queue).
DEFAULT_QUEUED_SECONDS = 900.0
# Windows for one appli closer than this are merged into one covering window.
MERGE_GAP_SECONDS = 3600
MAX_WINDOWS_PER_APPLI = 8


@dataclass(frozen=True, slots=True)
class SyncWindow:
    """Where a notification says data changed; startdate/enddate None = incremental only."""

    appli: int
    startdate: int | None
    enddate: int | None

    def to_json(self) -> list[int | None]:
        return [self.appli, self.startdate, self.enddate]

    @classmethod
    def from_json(cls, raw: Sequence[int | None]) -> SyncWindow:
        appli, startdate, enddate = raw
        assert appli is not None
        return cls(appli, startdate, enddate)


def merge_windows(existing: Sequence[SyncWindow], new: SyncWindow | None) -> tuple[SyncWindow, ...]:
    """Add `new` to `existing`, merging overlapping or close windows of the same appli.

    The result covers every input instant (it may cover more), has at most one undated window and
    MAX_WINDOWS_PER_APPLI dated windows per appli, and is sorted: (1, 10, 20) + (1, 15, 30) →
    (1, 10, 30).
    """
    windows = list(existing) if new is None else [*existing, new]
    result: list[SyncWindow] = []
    for appli in sorted({window.appli for window in windows}):
        mine = [window for window in windows if window.appli == appli]
        if any(window.startdate is None or window.enddate is None for window in mine):
            result.append(SyncWindow(appli, None, None))
        spans = sorted(
            (window.startdate, window.enddate)
            for window in mine
            if window.startdate is not None and window.enddate is not None
        )
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start - merged[-1][1] <= MERGE_GAP_SECONDS:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        while len(merged) > MAX_WINDOWS_PER_APPLI:
            # Join the two neighbours with the smallest gap: bounded state, still a superset.
            gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
            i = gaps.index(min(gaps))
            merged[i : i + 2] = [(merged[i][0], merged[i + 1][1])]
        result.extend(SyncWindow(appli, start, end) for start, end in merged)
    return tuple(result)


def covers(windows: Sequence[SyncWindow], window: SyncWindow) -> bool:
    """True if a sync that served `windows` re-fetched `window` too: an undated window is the
    incremental sweep every sync runs; a dated one must lie inside a served window of its appli."""
    if window.startdate is None or window.enddate is None:
        return True
    return any(
        served.appli == window.appli
        and served.startdate is not None
        and served.enddate is not None
        and served.startdate <= window.startdate
        and window.enddate <= served.enddate
        for served in windows
    )


# ---------------------------------------------------------------- the state machine (pure)


@dataclass(frozen=True, slots=True)
class UserSyncState:
    phase: Phase = "idle"
    dirty: bool = False
    pending: tuple[SyncWindow, ...] = ()
    # Windows a running (or failed, about to retry) sync took; given back unless it succeeds.
    claimed: tuple[SyncWindow, ...] = field(default=())
    # Running: the lease end. Queued: when a new request may enqueue again. Epoch seconds.
    expires_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "phase": self.phase,
                "dirty": self.dirty,
                "pending": [window.to_json() for window in self.pending],
                "claimed": [window.to_json() for window in self.claimed],
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> UserSyncState:
        if raw is None:
            return cls()
        data: dict[str, Any] = json.loads(raw)
        return cls(
            phase=data["phase"],
            dirty=bool(data["dirty"]),
            pending=tuple(SyncWindow.from_json(item) for item in data["pending"]),
            claimed=tuple(SyncWindow.from_json(item) for item in data["claimed"]),
            expires_at=float(data["expires_at"]),
        )

    @property
    def is_idle_and_empty(self) -> bool:
        return self.phase == "idle" and not self.pending and not self.claimed


@dataclass(frozen=True, slots=True)
class Timing:
    lease: float = DEFAULT_LEASE_SECONDS
    queued: float = DEFAULT_QUEUED_SECONDS


def on_request(
    state: UserSyncState, window: SyncWindow | None, now: float, timing: Timing
) -> tuple[UserSyncState, bool]:
    """Record a request; True when the caller must enqueue a job for the user."""
    pending = merge_windows(state.pending, window)
    if state.phase == "running" and state.expires_at > now:
        return replace(state, pending=pending, dirty=True), False
    if state.phase == "queued" and state.expires_at > now:
        return replace(state, pending=pending), False
    # Idle, a queued job that never started, or a holder whose lease ran out (killed worker):
    # the windows it had claimed go back, and a fresh job must be enqueued.
    restored = merge_all(state.claimed, pending)
    return UserSyncState("queued", False, restored, (), now + timing.queued), True


def on_start(
    state: UserSyncState, now: float, timing: Timing
) -> tuple[UserSyncState, list[SyncWindow] | None]:
    """Claim the pending windows; None when another live sync holds the user (it will follow up)."""
    if state.phase == "running" and state.expires_at > now:
        return replace(state, dirty=True), None
    claimed = merge_all(state.claimed, state.pending)
    return UserSyncState("running", False, (), claimed, now + timing.lease), list(claimed)


def on_refresh(state: UserSyncState, now: float, timing: Timing) -> UserSyncState:
    if state.phase != "running":
        return state
    return replace(state, expires_at=now + timing.lease)


def on_finish(
    state: UserSyncState, ok: bool, retrying: bool, now: float, timing: Timing
) -> tuple[UserSyncState, bool]:
    """Release the user; True when the caller must enqueue a follow-up job.

    ok: the claimed windows are done. Failure: they go back to pending; `retrying` says a retry
    of the same job is coming (stay queued), else the user goes idle with its windows kept for
    the next request.
    """
    if ok:
        if state.dirty or state.pending:
            return UserSyncState("queued", False, state.pending, (), now + timing.queued), True
        return UserSyncState(), False
    pending = merge_all(state.claimed, state.pending)
    if retrying:
        return UserSyncState("queued", False, pending, (), now + timing.queued), False
    return UserSyncState("idle", False, pending, (), 0.0), False


def merge_all(first: Sequence[SyncWindow], second: Sequence[SyncWindow]) -> tuple[SyncWindow, ...]:
    merged: tuple[SyncWindow, ...] = tuple(first)
    for window in second:
        merged = merge_windows(merged, window)
    return merged


# ---------------------------------------------------------------- storage of the state


class Coalescer(Protocol):
    async def request(self, userid: str, window: SyncWindow | None) -> bool:
        """Record that `userid` needs a sync covering `window`; True = enqueue a job now."""
        ...

    async def start(self, userid: str) -> list[SyncWindow] | None:
        """Claim the user's pending windows for a sync; None = another live sync holds it."""
        ...

    async def refresh(self, userid: str) -> None:
        """Extend the running lease (called periodically while the sync runs)."""
        ...

    async def finish(self, userid: str, ok: bool, *, retrying: bool = True) -> bool:
        """Release the user; True = requests came in meanwhile: enqueue a follow-up."""
        ...

    async def state(self, userid: str) -> UserSyncState: ...


class MemoryCoalescer:
    """The state machine in a dict, for the in-process queue (one process, one event loop)."""

    def __init__(self, timing: Timing | None = None, clock: Callable[[], float] = time.time):
        self._states: dict[str, UserSyncState] = {}
        self._timing = timing or Timing()
        self._clock = clock

    def _store(self, userid: str, state: UserSyncState) -> None:
        if state.is_idle_and_empty:
            self._states.pop(userid, None)
        else:
            self._states[userid] = state

    async def state(self, userid: str) -> UserSyncState:
        return self._states.get(userid, UserSyncState())

    async def request(self, userid: str, window: SyncWindow | None) -> bool:
        state, enqueue = on_request(await self.state(userid), window, self._clock(), self._timing)
        self._store(userid, state)
        return enqueue

    async def start(self, userid: str) -> list[SyncWindow] | None:
        state, claimed = on_start(await self.state(userid), self._clock(), self._timing)
        self._store(userid, state)
        return claimed

    async def refresh(self, userid: str) -> None:
        self._store(userid, on_refresh(await self.state(userid), self._clock(), self._timing))

    async def finish(self, userid: str, ok: bool, *, retrying: bool = True) -> bool:
        state, follow_up = on_finish(
            await self.state(userid), ok, retrying, self._clock(), self._timing
        )
        self._store(userid, state)
        return follow_up


# An idle user's leftover windows are forgotten after this; reconciliation covers them.
STATE_TTL_SECONDS = 7 * 24 * 3600


class RedisCoalescer:
    """The state machine in one Redis key per user, updated with WATCH/MULTI.

    Leases are compared with the Redis server's clock (TIME), so workers on hosts with skewed
    clocks agree on when a lease has run out.
    """

    def __init__(
        self, redis: Redis, *, timing: Timing | None = None, prefix: str = "fhir-gateway:coalesce:"
    ) -> None:
        self._redis = redis
        self._timing = timing or Timing()
        self._prefix = prefix

    async def state(self, userid: str) -> UserSyncState:
        return UserSyncState.from_json(await self._redis.get(self._prefix + userid))

    async def request(self, userid: str, window: SyncWindow | None) -> bool:
        return await self._transition(
            userid, lambda state, now: on_request(state, window, now, self._timing)
        )

    async def start(self, userid: str) -> list[SyncWindow] | None:
        return await self._transition(userid, lambda state, now: on_start(state, now, self._timing))

    async def refresh(self, userid: str) -> None:
        await self._transition(
            userid, lambda state, now: (on_refresh(state, now, self._timing), None)
        )

    async def finish(self, userid: str, ok: bool, *, retrying: bool = True) -> bool:
        return await self._transition(
            userid, lambda state, now: on_finish(state, ok, retrying, now, self._timing)
        )

    async def _transition(
        self, userid: str, step: Callable[[UserSyncState, float], tuple[UserSyncState, T]]
    ) -> T:
        key = self._prefix + userid
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    seconds, micros = await pipe.time()
                    new_state, outcome = step(
                        UserSyncState.from_json(raw), seconds + micros / 1_000_000
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new_state.is_idle_and_empty:
                        pipe.delete(key)
                    else:
                        pipe.set(key, new_state.to_json(), ex=STATE_TTL_SECONDS)
                    await pipe.execute()
                    return outcome
                except WatchError:
                    # Another process changed this user's state between our read and write.
                    continue
