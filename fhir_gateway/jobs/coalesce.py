"""Per-user coalescing of sync requests: at most one sync per user, no notification dropped.

arq refuses a job id that is queued or running (reliability-anchors §1.4, "busy-job drop"), so a
notification arriving while `sync:{user}` runs would be lost. Instead each user has a small state
machine — idle → queued → running → running+dirty — whose pending windows are merged; a sync
claims them when it starts and gives them back if it fails. The running state carries a lease
refreshed while the sync runs, so a worker killed with SIGKILL never leaves the user stuck.

The queued state names the job that will serve it. Writing the state and enqueueing that job are
two steps, and a caller cancelled between them (the webhook's enqueue timeout, arq's job timeout,
SIGTERM) leaves a state whose job never reached the queue; so whenever the state is read as
queued, the job is looked up (`JobAlive`), and one that is gone is enqueued again under the same
id — arq refuses the id while the original is queued or running, so two callers reviving it at
once still make one job.

The transitions are pure functions on `UserSyncState`; `MemoryCoalescer` (one process) and
`RedisCoalescer` (every process, compare-and-set on one key per user) only store the state.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, TypeVar

from redis.asyncio import Redis

Phase = Literal["idle", "queued", "running"]
T = TypeVar("T")
# Whether the job with this id is still queued or running (JobQueue.job_alive).
JobAlive = Callable[[str], Awaitable[bool]]

# A running sync refreshes its lease every third of it; a holder silent for a whole lease is dead.
DEFAULT_LEASE_SECONDS = 60.0
# How long a "queued" user waits for its job to start before a new request enqueues another one
# (a backstop: a job that vanished is normally found gone by JobAlive and enqueued again).
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
    # Queued: the id of the job that will serve it (None: unknown, wait for expires_at).
    job: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "phase": self.phase,
                "dirty": self.dirty,
                "pending": [window.to_json() for window in self.pending],
                "claimed": [window.to_json() for window in self.claimed],
                "expires_at": self.expires_at,
                "job": self.job,
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
            job=data.get("job"),
        )

    @property
    def is_idle_and_empty(self) -> bool:
        return self.phase == "idle" and not self.pending and not self.claimed

    def waits_on(self, now: float) -> str | None:
        """The job a live queued state waits for: the one to look up in the queue."""
        if self.phase == "queued" and self.expires_at > now:
            return self.job
        return None


def new_job_id(userid: str) -> str:
    """Unique per enqueue: the coalescer, not arq's id check, keeps one sync per user, and a
    follow-up must never be refused because the previous job's id is still running."""
    return f"sync:{userid}:{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class Timing:
    lease: float = DEFAULT_LEASE_SECONDS
    queued: float = DEFAULT_QUEUED_SECONDS


def on_request(
    state: UserSyncState,
    window: SyncWindow | None,
    now: float,
    timing: Timing,
    job_id: str,
    job_alive: bool = True,
) -> tuple[UserSyncState, str | None]:
    """Record a request; the id of a job the caller must enqueue now, or None.

    `job_id`: the id for a new job. `job_alive`: whether the job a queued state waits on is
    still queued or running; when it is gone, its id is returned to be enqueued again.
    """
    pending = merge_windows(state.pending, window)
    if state.phase == "running" and state.expires_at > now:
        return replace(state, pending=pending, dirty=True), None
    waiting_on = state.waits_on(now)
    if state.phase == "queued" and state.expires_at > now:
        if waiting_on is None or job_alive:
            return replace(state, pending=pending), None
        # Its job never reached the queue (the enqueuer was cancelled) or was dropped.
        return replace(state, pending=pending), waiting_on
    # Idle, a queued job that never started, or a holder whose lease ran out (killed worker):
    # the windows it had claimed go back, and a fresh job must be enqueued.
    restored = merge_all(state.claimed, pending)
    return UserSyncState("queued", False, restored, (), now + timing.queued, job_id), job_id


def on_revive(state: UserSyncState, now: float, job_alive: bool) -> str | None:
    """The sweeper's check: the job id to enqueue again when a queued state's job is gone."""
    waiting_on = state.waits_on(now)
    if waiting_on is None or job_alive:
        return None
    return waiting_on


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
    state: UserSyncState,
    ok: bool,
    retrying: bool,
    now: float,
    timing: Timing,
    *,
    current_job: str | None,
    follow_up_job: str,
) -> tuple[UserSyncState, str | None]:
    """Release the user; the id of a follow-up job the caller must enqueue, or None.

    ok: the claimed windows are done. Failure: they go back to pending; `retrying` says a retry
    of the same job (`current_job`) is coming (stay queued on it), else the user goes idle with
    its windows kept for the next request.
    """
    if ok:
        if state.dirty or state.pending:
            queued = UserSyncState(
                "queued", False, state.pending, (), now + timing.queued, follow_up_job
            )
            return queued, follow_up_job
        return UserSyncState(), None
    pending = merge_all(state.claimed, state.pending)
    if retrying:
        return UserSyncState("queued", False, pending, (), now + timing.queued, current_job), None
    return UserSyncState("idle", False, pending, (), 0.0), None


def merge_all(first: Sequence[SyncWindow], second: Sequence[SyncWindow]) -> tuple[SyncWindow, ...]:
    merged: tuple[SyncWindow, ...] = tuple(first)
    for window in second:
        merged = merge_windows(merged, window)
    return merged


# ---------------------------------------------------------------- storage of the state


class Coalescer(Protocol):
    async def request(self, userid: str, window: SyncWindow | None) -> str | None:
        """Record that `userid` needs a sync covering `window`; the job id to enqueue now
        (a new job, or a queued one that never reached the queue), else None."""
        ...

    async def start(self, userid: str) -> list[SyncWindow] | None:
        """Claim the user's pending windows for a sync; None = another live sync holds it."""
        ...

    async def refresh(self, userid: str) -> None:
        """Extend the running lease (called periodically while the sync runs)."""
        ...

    async def finish(
        self, userid: str, ok: bool, *, retrying: bool = True, job_id: str | None = None
    ) -> str | None:
        """Release the user (`job_id`: the finishing job, which arq runs again when
        `retrying`); the follow-up job id to enqueue when requests came in meanwhile."""
        ...

    async def revive(self, userid: str) -> str | None:
        """The job id to enqueue again if the user is queued on a job that is gone."""
        ...

    async def queued_users(self) -> list[str]:
        """Users whose state is queued (the sweeper revives those whose job is gone)."""
        ...

    async def state(self, userid: str) -> UserSyncState: ...


async def _always_alive(job_id: str) -> bool:
    return True


class MemoryCoalescer:
    """The state machine in a dict, for the in-process queue (one process, one event loop)."""

    def __init__(
        self,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.time,
        *,
        job_alive: JobAlive = _always_alive,
    ) -> None:
        self._states: dict[str, UserSyncState] = {}
        self._timing = timing or Timing()
        self._clock = clock
        self._job_alive = job_alive

    def _store(self, userid: str, state: UserSyncState) -> None:
        if state.is_idle_and_empty:
            self._states.pop(userid, None)
        else:
            self._states[userid] = state

    async def state(self, userid: str) -> UserSyncState:
        return self._states.get(userid, UserSyncState())

    async def _alive(self, state: UserSyncState, now: float) -> bool:
        waiting_on = state.waits_on(now)
        return waiting_on is None or await self._job_alive(waiting_on)

    async def request(self, userid: str, window: SyncWindow | None) -> str | None:
        # InProcessQueue.job_alive never suspends, so nothing changes the state in between.
        now = self._clock()
        current = await self.state(userid)
        alive = await self._alive(current, now)
        state, job = on_request(current, window, now, self._timing, new_job_id(userid), alive)
        self._store(userid, state)
        return job

    async def start(self, userid: str) -> list[SyncWindow] | None:
        state, claimed = on_start(await self.state(userid), self._clock(), self._timing)
        self._store(userid, state)
        return claimed

    async def refresh(self, userid: str) -> None:
        self._store(userid, on_refresh(await self.state(userid), self._clock(), self._timing))

    async def finish(
        self, userid: str, ok: bool, *, retrying: bool = True, job_id: str | None = None
    ) -> str | None:
        state, follow_up = on_finish(
            await self.state(userid),
            ok,
            retrying,
            self._clock(),
            self._timing,
            current_job=job_id,
            follow_up_job=new_job_id(userid),
        )
        self._store(userid, state)
        return follow_up

    async def revive(self, userid: str) -> str | None:
        now = self._clock()
        current = await self.state(userid)
        return on_revive(current, now, await self._alive(current, now))

    async def queued_users(self) -> list[str]:
        return [userid for userid, state in self._states.items() if state.phase == "queued"]


# An idle user's leftover windows are forgotten after this; reconciliation covers them.
STATE_TTL_SECONDS = 7 * 24 * 3600
# KEYS[1]: the state key; ARGV: the value it was read as ("" = absent), the new value ("" =
# delete), the TTL. 1 if written, 0 if the key no longer holds what was read.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
    return 0
end
if ARGV[2] == '' then
    redis.call('DEL', KEYS[1])
else
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 1
"""


class RedisCoalescer:
    """The state machine in one Redis key per user, updated by compare-and-set (a Lua script).

    Leases are compared with the Redis server's clock (TIME), so workers on hosts with skewed
    clocks agree on when a lease has run out. The queued job is looked up between the read and
    the compare-and-set, so a job that starts meanwhile (its start() writes the key) makes the
    transition run again.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        timing: Timing | None = None,
        prefix: str = "fhir-gateway:coalesce:",
        job_alive: JobAlive = _always_alive,
    ) -> None:
        self._redis = redis
        self._timing = timing or Timing()
        self._prefix = prefix
        self._job_alive = job_alive
        self._compare_and_set = redis.register_script(_COMPARE_AND_SET)

    async def state(self, userid: str) -> UserSyncState:
        return UserSyncState.from_json(await self._redis.get(self._prefix + userid))

    async def request(self, userid: str, window: SyncWindow | None) -> str | None:
        job_id = new_job_id(userid)
        return await self._transition(
            userid,
            lambda state, now, alive: on_request(state, window, now, self._timing, job_id, alive),
        )

    async def start(self, userid: str) -> list[SyncWindow] | None:
        return await self._transition(
            userid, lambda state, now, _alive: on_start(state, now, self._timing)
        )

    async def refresh(self, userid: str) -> None:
        await self._transition(
            userid, lambda state, now, _alive: (on_refresh(state, now, self._timing), None)
        )

    async def finish(
        self, userid: str, ok: bool, *, retrying: bool = True, job_id: str | None = None
    ) -> str | None:
        follow_up_job = new_job_id(userid)
        return await self._transition(
            userid,
            lambda state, now, _alive: on_finish(
                state,
                ok,
                retrying,
                now,
                self._timing,
                current_job=job_id,
                follow_up_job=follow_up_job,
            ),
        )

    async def revive(self, userid: str) -> str | None:
        return await self._transition(
            userid, lambda state, now, alive: (state, on_revive(state, now, alive))
        )

    async def queued_users(self) -> list[str]:
        users: list[str] = []
        async for key in self._redis.scan_iter(match=self._prefix + "*", count=500):
            raw = await self._redis.get(key)
            if raw is not None and UserSyncState.from_json(raw).phase == "queued":
                name = key.decode() if isinstance(key, bytes) else str(key)
                users.append(name.removeprefix(self._prefix))
        return users

    async def _transition(
        self, userid: str, step: Callable[[UserSyncState, float, bool], tuple[UserSyncState, T]]
    ) -> T:
        key = self._prefix + userid
        while True:
            # One round trip to read, one to write: the webhook's ack waits on these (a
            # WATCH/MULTI transaction took five).
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.time()
                raw, (seconds, micros) = await pipe.execute()
            now = seconds + micros / 1_000_000
            state = UserSyncState.from_json(raw)
            waiting_on = state.waits_on(now)
            alive = waiting_on is None or await self._job_alive(waiting_on)
            new_state, outcome = step(state, now, alive)
            replacement = "" if new_state.is_idle_and_empty else new_state.to_json()
            # Written even when unchanged: it fails if the state moved since it was read.
            swapped = await self._compare_and_set(
                keys=[key], args=[raw or b"", replacement, STATE_TTL_SECONDS]
            )
            if swapped:
                return outcome
            # Another process changed this user's state between our read and write.
