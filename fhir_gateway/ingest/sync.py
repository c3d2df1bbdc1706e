"""Per-user sync: Withings rows → validated FHIR resources in the Store, cursors only after.

Incremental (withings-api.md §3.1, §4.1, §4.5): getmeas, getactivity and sleep getsummary with
`lastupdate` = the stored cursor, paging until `more` = 0. Windows (from notifications, §5.4):
re-fetch that span with startdate/enddate; measure groups are the only rows Withings deletes
without a trace (§8.6), so Observations of the window whose group is no longer returned are
deleted (history kept, a read answers 410).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fhir_gateway.errors import (
    InvalidResource,
    WithingsAuthError,
    WithingsError,
    WithingsInvalidGrant,
)
from fhir_gateway.fhir.validation import (
    VITALSIGNS_PROFILE,
    validate_resource,
    validate_vital_signs,
)
from fhir_gateway.ingest.cursors import STREAMS, CursorStore, Stream
from fhir_gateway.ingest.reports import (
    ProgressCallback,
    SyncProgress,
    SyncReport,
    UserSyncReport,
)
from fhir_gateway.ingest.subscriptions import Subscriptions
from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import (
    Cursor,
    DateClause,
    Query,
    RangeBounds,
    ReferenceClause,
    Resource,
    Store,
    TokenClause,
    TokenMatch,
)
from fhir_gateway.withings import identity
from fhir_gateway.withings.client import WithingsClient
from fhir_gateway.withings.mapping import (
    Normalised,
    normalise_activity,
    normalise_measure_groups,
    normalise_sleep_summaries,
    patient_resource,
)
from fhir_gateway.withings.tokens import NeedsReauth, TokenManager
from fhir_gateway.withings.vault import TokenVault

__all__ = ["SyncProgress", "SyncReport", "SyncService", "SyncWindow", "UserSyncReport"]

log = logging.getLogger(__name__)

ACTIVITY_APPLI = 16
SLEEP_APPLI = 44
# Notifications that announce no data we fetch (§5.3): profile changes, bed events, no-account.
NO_DATA_APPLIS = frozenset({46, 50, 51, 52, 53, 55})
# A sweep longer than this is Withings paging in circles, not a big account (2,062 groups = 11).
MAX_PAGES = 10_000
DELETE_SCAN_PAGE = 500
# The periodic reconciliation re-reads this much recent history to catch deletions whose
# notification was lost (Withings never redelivers, §5.5).
RECONCILE_DELETIONS_SECONDS = 30 * 86_400
# `lastupdate` is asked one second before the cursor: Withings answers rows modified strictly
# after it (§3.1) at one-second resolution, so a row modified in the very second of the newest
# row a sweep saw, but after that sweep read its page, would never be returned again. The
# overlap re-reads that second's rows; storing them again changes nothing.
LASTUPDATE_OVERLAP_SECONDS = 1
# Activity and sleep rows are keyed by the user's local day; a notification's epochs are UTC,
# so the day range is widened by one day on each side to cover every timezone.
DAY_SLACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One page of one stream: raw rows, paging, and what they normalised to."""

    rows: list[dict[str, Any]]
    more: bool
    offset: int
    normalised: Normalised


Fetch = Callable[[str, dict[str, Any]], Awaitable[_Batch]]


class SyncService:
    """Fetches a user's Withings data and stores it as FHIR; satisfies jobs' `UserSync`."""

    def __init__(
        self,
        store: Store,
        client: WithingsClient,
        tokens: TokenManager,
        vault: TokenVault,
        *,
        subscriptions: Subscriptions | None = None,
        clock: Callable[[], float] = time.time,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._client = client
        self._tokens = tokens
        self._vault = vault
        self._subscriptions = subscriptions
        self._clock = clock
        self.cursors = CursorStore(store)

    def __repr__(self) -> str:
        return f"SyncService(store={type(self._store).__name__})"

    async def connected_users(self) -> list[str]:
        """Users whose tokens are usable; those flagged needs_reauth are left out."""
        return [user.userid for user in await self._vault.list_users(status="active")]

    async def sync_user(self, userid: str, windows: Sequence[SyncWindow]) -> None:
        """jobs' UserSync: incremental sync plus re-fetch of the notified windows."""
        await self.sync(userid, windows)

    async def reconcile_user(self, userid: str) -> None:
        """jobs' UserSync, periodic: missed notifications are never redelivered (§5.5), so
        sweep, re-check recent measure groups for deletions, and repair subscriptions."""
        now = int(self._clock())
        recent = SyncWindow(1, now - RECONCILE_DELETIONS_SECONDS, now)
        await self.sync(userid, (recent,))
        if self._subscriptions is not None:
            await self._subscriptions.repair(userid)

    async def sync(
        self,
        userid: str,
        windows: Sequence[SyncWindow] = (),
        *,
        progress: Callable[[UserSyncReport], None] | None = None,
    ) -> UserSyncReport:
        """Sweep every stream from its cursor, then re-fetch the dated `windows`.

        Raises NeedsReauth (not retryable) when the user must reconnect, WithingsError or
        StoreError (retryable) when a call fails; cursors only ever cover stored pages.
        """
        report = UserSyncReport(userid)
        access_token = await self._tokens.access_token(userid)
        patient_id = identity.patient_id(userid)
        await self._store_resources([patient_resource(userid)], report)
        run = _Run(self, userid, patient_id, access_token, report, progress)
        for stream in STREAMS:
            await run.sweep(stream)
        for window in _distinct(windows):
            await run.window(window)
        if self._metrics is not None and run.newest_modified is not None:
            self._metrics.sync_lag.set(max(0.0, self._clock() - run.newest_modified))
        if report.skipped or report.unknown_types:
            # §3.4 and the issue: what was left out, and why, is logged per sync.
            log.info(
                "withings user %s: skipped %s; unknown meastypes kept with the Withings code "
                "only: %s",
                userid,
                dict(report.skipped),
                sorted(report.unknown_types),
            )
        log.info(
            "withings user %s synced: %d pages, %d created, %d updated, %d deleted, %d invalid",
            userid,
            report.pages,
            report.created,
            report.updated,
            report.deleted,
            report.invalid,
        )
        return report

    async def sync_all(
        self, userids: Iterable[str] | None = None, *, progress: ProgressCallback | None = None
    ) -> SyncReport:
        """Sync every connected user (or `userids`) one after another; failures are reported."""
        summary = SyncReport()
        if userids is None:
            targets = await self.connected_users()
            summary.needs_reauth = [
                user.userid for user in await self._vault.list_users(status="needs_reauth")
            ]
        else:
            targets = list(userids)
        for done, userid in enumerate(targets):

            def on_page(report: UserSyncReport, done: int = done, userid: str = userid) -> None:
                if progress is not None:
                    progress(SyncProgress(userid, done, len(targets), report.pages, report.stored))

            try:
                report = await self.sync(userid, progress=on_page)
            except NeedsReauth as error:
                report = UserSyncReport(userid, outcome="needs_reauth", error=str(error))
                summary.needs_reauth.append(userid)
            except WithingsError as error:
                # GatewayError messages are safe to show (no tokens); the next sync retries.
                log.warning("withings user %s sync failed: %s", userid, error)
                report = UserSyncReport(userid, outcome="failed", error=str(error))
            summary.users.append(report)
            if progress is not None:
                progress(SyncProgress(userid, done + 1, len(targets), report.pages, report.stored))
        return summary

    # -- storing ----------------------------------------------------------------------------

    async def _store_resources(self, resources: Sequence[Resource], report: UserSyncReport) -> None:
        """Validate each resource once, store the valid ones in one upsert."""
        valid: list[Resource] = []
        for resource in resources:
            try:
                validate_resource(resource)
                if VITALSIGNS_PROFILE in resource.get("meta", {}).get("profile", []):
                    validate_vital_signs(resource)
            except InvalidResource as problem:
                report.invalid += 1
                log.warning(
                    "not storing %s/%s: %s", resource.get("resourceType"), resource["id"], problem
                )
                continue
            valid.append(resource)
        if not valid:
            return
        result = await self._store.upsert(valid)
        report.created += result.created
        report.updated += result.updated
        report.unchanged += result.unchanged

    async def _store_batch(self, batch: _Batch, report: UserSyncReport) -> None:
        # Devices first: the Observations of the same page reference them.
        await self._store_resources(
            [*batch.normalised.devices, *batch.normalised.resources], report
        )
        report.skipped.update(batch.normalised.skipped)
        report.unknown_types |= batch.normalised.unknown_types
        report.pages += 1

    async def _delete_missing(
        self, patient_id: str, startdate: int, enddate: int, kept: set[str], report: UserSyncReport
    ) -> None:
        """Delete the patient's measure Observations taken in [startdate, enddate] not in `kept`."""
        window = RangeBounds(start_ge=startdate * 1_000_000, start_lt=(enddate + 1) * 1_000_000)
        query = Query(
            "Observation",
            clauses=(
                ReferenceClause("patient", (patient_id,)),
                TokenClause("identifier", (TokenMatch(identity.MEASURE_IDENTIFIER_SYSTEM, None),)),
                DateClause("date", (window,)),
            ),
            limit=DELETE_SCAN_PAGE,
        )
        doomed: list[str] = []
        while True:
            page = await self._store.search(query)
            doomed += [row.id for row in page.resources if row.id not in kept]
            if not page.more or not page.resources:
                break
            last = page.resources[-1]
            query = Query(
                query.resource_type,
                clauses=query.clauses,
                after=Cursor(last.id, last.id),
                limit=DELETE_SCAN_PAGE,
            )
        for observation_id in doomed:
            if await self._store.delete("Observation", observation_id):
                report.deleted += 1
        if doomed:
            log.info(
                "withings patient %s: %d Observations deleted at Withings were deleted",
                patient_id,
                len(doomed),
            )


class _Run:
    """One user's sync in progress: the token, the report, and the three streams."""

    def __init__(
        self,
        service: SyncService,
        userid: str,
        patient_id: str,
        access_token: str,
        report: UserSyncReport,
        progress: Callable[[UserSyncReport], None] | None,
    ) -> None:
        self._service = service
        self._client = service._client
        self._userid = userid
        self._patient_id = patient_id
        self._access_token = access_token
        self._report = report
        self._progress = progress
        # The newest `modified` among rows an incremental sweep found past an existing cursor:
        # what the sync-lag gauge measures (a first backfill or a re-fetched window does not).
        self.newest_modified: int | None = None

    def __repr__(self) -> str:  # the access token never reaches a repr
        return f"_Run(userid={self._userid!r})"

    async def sweep(self, stream: Stream) -> None:
        """Incremental: everything modified after the cursor, page by page, cursor after."""
        cursors = self._service.cursors
        start = await cursors.start(self._userid, stream)
        offset, max_modified = start.offset, start.max_modified
        lastupdate = max(0, start.lastupdate - LASTUPDATE_OVERLAP_SECONDS)
        for _ in range(MAX_PAGES):
            batch = await self._fetch(stream, {"lastupdate": lastupdate, "offset": offset})
            await self._store(batch)
            modified = _modified(batch.rows)
            max_modified = max([max_modified, *modified])
            # Past the cursor only: the overlap second re-reads rows already stored.
            fresh = [value for value in modified if value > start.lastupdate]
            if start.lastupdate and fresh:
                self.newest_modified = max([self.newest_modified or 0, *fresh])
            if not batch.more:
                await cursors.sweep_finished(self._userid, stream, start, max_modified)
                return
            offset = _next_offset(stream, offset, batch)
            await cursors.page_stored(self._userid, stream, start, offset, max_modified)
        raise WithingsError(f"withings {stream} paging did not end after {MAX_PAGES} pages")

    async def window(self, window: SyncWindow) -> None:
        """Re-fetch what a notification names; an undated window means an incremental sweep."""
        stream = _stream_of(window.appli)
        if stream is None:
            log.debug("withings appli %d announces no data we fetch", window.appli)
            return
        if window.startdate is None or window.enddate is None:
            return  # "something changed, no dates": the sweep that ran first covered it
        if stream == "measures":
            await self._measure_window(window.startdate, window.enddate)
            return
        first = _day(window.startdate) - DAY_SLACK
        last = _day(window.enddate) + DAY_SLACK
        span = {"startdateymd": first.isoformat(), "enddateymd": last.isoformat()}
        await self._pages(stream, span)

    async def _measure_window(self, startdate: int, enddate: int) -> None:
        """All groups taken in the window; stored ones Withings no longer returns are deleted."""
        span = {"startdate": startdate, "enddate": enddate}
        kept = await self._pages("measures", span)
        await self._service._delete_missing(
            self._patient_id, startdate, enddate, kept, self._report
        )

    async def _pages(self, stream: Stream, span: dict[str, Any]) -> set[str]:
        """Fetch and store every page of a dated span; the ids it produced (stored or not)."""
        produced: set[str] = set()
        offset: int | None = None
        for _ in range(MAX_PAGES):
            batch = await self._fetch(stream, {**span, "offset": offset})
            await self._store(batch)
            produced |= {resource["id"] for resource in batch.normalised.resources}
            if not batch.more:
                return produced
            offset = _next_offset(stream, offset, batch)
        raise WithingsError(f"withings {stream} paging did not end after {MAX_PAGES} pages")

    async def _fetch(self, stream: Stream, params: dict[str, Any]) -> _Batch:
        """One page; a token refused before its expiry is refreshed and the call sent again."""
        fetch = self._fetchers()[stream]
        try:
            return await fetch(self._access_token, params)
        except WithingsAuthError as refused:
            if isinstance(refused, WithingsInvalidGrant):
                raise
            # Revoked early, or superseded by a refresh elsewhere (§1.4): the expiry we stored
            # says nothing then. Once only: a second refusal goes to the job's retry policy.
            log.info("withings user %s: access token refused; refreshing", self._userid)
            self._access_token = await self._service._tokens.access_token(
                self._userid, rejected=self._access_token
            )
            return await fetch(self._access_token, params)

    async def _store(self, batch: _Batch) -> None:
        await self._service._store_batch(batch, self._report)
        if self._progress is not None:
            self._progress(self._report)

    def _fetchers(self) -> dict[Stream, Fetch]:
        userid, patient_id, client = self._userid, self._patient_id, self._client

        async def measures(token: str, params: dict[str, Any]) -> _Batch:
            page = await client.get_measures(token, **params)
            normalised = normalise_measure_groups(
                page.groups, userid=userid, patient_id=patient_id, timezone=page.timezone
            )
            return _Batch(page.groups, page.more, page.offset, normalised)

        async def activity(token: str, params: dict[str, Any]) -> _Batch:
            page = await client.get_activity(token, **params)
            normalised = normalise_activity(page.rows, userid=userid, patient_id=patient_id)
            return _Batch(page.rows, page.more, page.offset, normalised)

        async def sleep(token: str, params: dict[str, Any]) -> _Batch:
            page = await client.get_sleep_summary(token, **params)
            normalised = normalise_sleep_summaries(page.rows, userid=userid, patient_id=patient_id)
            return _Batch(page.rows, page.more, page.offset, normalised)

        return {"measures": measures, "activity": activity, "sleep": sleep}


def _stream_of(appli: int) -> Stream | None:
    if appli == ACTIVITY_APPLI:
        return "activity"
    if appli == SLEEP_APPLI:
        return "sleep"
    if appli in NO_DATA_APPLIS:
        return None
    # 1, 2, 4, 54, 58, 62, 63 … and any future data appli: its data comes through getmeas.
    return "measures"


def _distinct(windows: Sequence[SyncWindow]) -> list[SyncWindow]:
    """Drop repeats: undated windows of several measure applis need one measures sweep."""
    seen: set[tuple[Stream | None, int | None, int | None]] = set()
    result: list[SyncWindow] = []
    for window in windows:
        key = (_stream_of(window.appli), window.startdate, window.enddate)
        if key not in seen:
            seen.add(key)
            result.append(window)
    return result


def _modified(rows: Iterable[dict[str, Any]]) -> list[int]:
    values = (row.get("modified") for row in rows)
    return [value for value in values if isinstance(value, int) and not isinstance(value, bool)]


def _next_offset(stream: Stream, offset: int | None, batch: _Batch) -> int:
    if batch.offset <= (offset or 0):
        raise WithingsError(f"withings {stream} paging did not advance (offset {batch.offset})")
    return batch.offset


def _day(epoch: int) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()
