"""A UserSync that records what it is asked to do: the seam, not our sync."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from fhir_gateway.jobs.tasks import SyncWindow


@dataclass
class SyncRun:
    userid: str
    windows: tuple[SyncWindow, ...]
    started: float
    finished: float | None = None
    ok: bool = False


@dataclass
class RecordingSync:
    delay: float = 0.0
    users: list[str] = field(default_factory=list)
    runs: list[SyncRun] = field(default_factory=list)
    reconciled: list[tuple[str, float]] = field(default_factory=list)
    failures: deque[BaseException] = field(default_factory=deque)
    fail_always: BaseException | None = None
    max_concurrent: int = 0
    _active: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    started_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def sync_user(self, userid: str, windows: Sequence[SyncWindow]) -> None:
        run = SyncRun(userid, tuple(windows), time.monotonic())
        self.runs.append(run)
        self._active[userid] += 1
        self.max_concurrent = max(self.max_concurrent, self._active[userid])
        self.started_event.set()
        try:
            if self.fail_always is not None:
                raise self.fail_always
            if self.failures:
                raise self.failures.popleft()
            await asyncio.sleep(self.delay)
            run.ok = True
        finally:
            run.finished = time.monotonic()
            self._active[userid] -= 1

    async def reconcile_user(self, userid: str) -> None:
        self.reconciled.append((userid, time.time()))

    async def connected_users(self) -> list[str]:
        return list(self.users)

    def covered(self, window: SyncWindow, after: float) -> bool:
        """Some successful run that started after `after` re-fetched all of `window`."""
        return any(
            run.ok
            and run.started >= after
            and any(
                claimed.appli == window.appli
                and claimed.startdate is not None
                and claimed.enddate is not None
                and window.startdate is not None
                and window.enddate is not None
                and claimed.startdate <= window.startdate
                and window.enddate <= claimed.enddate
                for claimed in run.windows
            )
            for run in self.runs
        )
