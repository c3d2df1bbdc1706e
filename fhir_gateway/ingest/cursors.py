"""Sync cursors: how far each user's Withings streams are stored, advanced only after the write.

Record kind "sync_cursors", key "<userid>:<stream>" (stream = measures, activity or sleep):

    {"lastupdate": 1700000000,          # every row with modified <= this is stored
     "sweep": {"from": 1700000000,      # an unfinished sweep started from that lastupdate …
               "offset": 400,           # … has stored every page before this offset
               "max_modified": 1700086400} | null}

A sweep asks `lastupdate=L` and pages with `offset` until `more` = 0. Withings does not promise
that pages come in `modified` order, so `lastupdate` itself can only move when a sweep ends (to
the largest `modified` it saw); what advances page by page is the sweep's resume point, so a crash
in the middle of a 2,000-group backfill resumes at the next page instead of the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fhir_gateway.errors import VersionConflict
from fhir_gateway.store.base import JSONObject, Record, Store

CURSORS_KIND = "sync_cursors"
# Every lost CAS round means another sync of the same user wrote first, so n concurrent syncs
# need at most n rounds; beyond this many, something rewrites the record in a loop.
MAX_CAS_ATTEMPTS = 64

Stream = Literal["measures", "activity", "sleep"]
STREAMS: tuple[Stream, ...] = ("measures", "activity", "sleep")


@dataclass(frozen=True, slots=True)
class SweepStart:
    """Where the next sweep of a stream begins: `offset` None = first page."""

    lastupdate: int
    offset: int | None
    max_modified: int


class CursorStore:
    """Per-user, per-stream cursors on the Store's compare-and-set records."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def start(self, userid: str, stream: Stream) -> SweepStart:
        """Resume an unfinished sweep from the stored lastupdate, or begin a new one."""
        record = await self._store.get_record(CURSORS_KIND, _key(userid, stream))
        if record is None:
            # lastupdate 0 = "everything changed since 1970": the initial backfill.
            return SweepStart(lastupdate=0, offset=None, max_modified=0)
        lastupdate = int(record.data.get("lastupdate") or 0)
        sweep = record.data.get("sweep")
        if isinstance(sweep, dict) and sweep.get("from") == lastupdate:
            return SweepStart(lastupdate, int(sweep["offset"]), int(sweep["max_modified"]))
        return SweepStart(lastupdate=lastupdate, offset=None, max_modified=lastupdate)

    async def page_stored(
        self, userid: str, stream: Stream, sweep: SweepStart, next_offset: int, max_modified: int
    ) -> None:
        """Remember that every page of the sweep before `next_offset` is stored."""
        progress = {"from": sweep.lastupdate, "offset": next_offset, "max_modified": max_modified}
        for _ in range(MAX_CAS_ATTEMPTS):
            record = await self._store.get_record(CURSORS_KIND, _key(userid, stream))
            current = _lastupdate(record)
            if current != sweep.lastupdate:
                return  # a concurrent sweep finished meanwhile: its cursor is already newer
            data: JSONObject = {"lastupdate": current, "sweep": progress}
            if await self._put(userid, stream, data, record):
                return
        raise VersionConflict(f"sync cursor {stream} of user {userid} kept changing")

    async def sweep_finished(
        self, userid: str, stream: Stream, sweep: SweepStart, max_modified: int
    ) -> int:
        """Move lastupdate to the newest `modified` seen (never backwards); return it."""
        for _ in range(MAX_CAS_ATTEMPTS):
            record = await self._store.get_record(CURSORS_KIND, _key(userid, stream))
            advanced = max(_lastupdate(record), sweep.lastupdate, max_modified)
            if record is not None and record.data == {"lastupdate": advanced, "sweep": None}:
                return advanced  # nothing new: skip the write (and the contention)
            data: JSONObject = {"lastupdate": advanced, "sweep": None}
            if await self._put(userid, stream, data, record):
                return advanced
        raise VersionConflict(f"sync cursor {stream} of user {userid} kept changing")

    async def lastupdates(self, userid: str) -> dict[str, int | None]:
        """Each stream's lastupdate (None = never synced), for reports and `fhir-gateway users`."""
        result: dict[str, int | None] = {}
        for stream in STREAMS:
            record = await self._store.get_record(CURSORS_KIND, _key(userid, stream))
            result[stream] = None if record is None else _lastupdate(record)
        return result

    async def _put(
        self, userid: str, stream: Stream, data: JSONObject, record: Record | None
    ) -> bool:
        expected = 0 if record is None else record.version
        try:
            await self._store.put_record(
                CURSORS_KIND, _key(userid, stream), data, expected_version=expected
            )
        except VersionConflict:
            return False
        return True


def _key(userid: str, stream: Stream) -> str:
    return f"{userid}:{stream}"


def _lastupdate(record: Record | None) -> int:
    return 0 if record is None else int(record.data.get("lastupdate") or 0)
