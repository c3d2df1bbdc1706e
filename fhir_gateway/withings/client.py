"""The Withings HTTP API over httpx: form POSTs, the status envelope, bounded retries."""

from __future__ import annotations

import asyncio
import logging
import random as random_module
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from fhir_gateway.config import Settings
from fhir_gateway.errors import (
    ConfigError,
    WithingsError,
    WithingsRateLimited,
    WithingsTransient,
)
from fhir_gateway.withings.models import MeasurePage, SeriesPage, TokenSet
from fhir_gateway.withings.status import exception_for

logger = logging.getLogger("fhir_gateway.withings")

ACTIVITY_FIELDS = (
    "steps", "distance", "elevation", "soft", "moderate", "intense", "active",
    "calories", "totalcalories", "hr_average", "hr_min", "hr_max",
)  # fmt: skip

# Without data_fields getsummary answers only a default subset (§4.5), so ask for what we map.
SLEEP_SUMMARY_FIELDS = (
    "total_timeinbed", "total_sleep_time", "asleepduration", "lightsleepduration",
    "remsleepduration", "deepsleepduration", "sleep_efficiency", "sleep_latency",
    "wakeup_latency", "wakeupduration", "wakeupcount", "waso", "nb_rem_episodes",
    "out_of_bed_count", "hr_average", "hr_min", "hr_max", "rr_average", "rr_min", "rr_max",
    "breathing_disturbances_intensity", "apnea_hypopnea_index", "snoring",
    "snoringepisodecount", "sleep_score",
)  # fmt: skip

# Failures where the request certainly never reached Withings: safe to resend even a refresh.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RequestBudget(Protocol):
    """A shared request allowance (Withings: 120 requests/minute per application, §2.3)."""

    async def acquire(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How data calls retry transient failures and 601s: exponential backoff with full jitter."""

    attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    # A 601 asking for a longer wait is raised instead: a job queue can defer, a worker should
    # not sleep for minutes (real hints of 188 s are on record, §1.3).
    max_rate_limit_wait: float = 60.0

    def backoff(self, failed_attempts: int, random: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(failed_attempts-1)))."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (failed_attempts - 1))
        return random() * ceiling


Form = Mapping[str, str | int | None]
# Told of every request's outcome: (action, envelope status | "transport" | "http_<code>" |
# "malformed"), e.g. for the Prometheus counter of Withings calls.
OnCall = Callable[[str, int | str], None]


class WithingsClient:
    """One application's view of the Withings API; every method is one logical call."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        budget: RequestBudget | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        on_call: OnCall | None = None,
    ) -> None:
        self._http = http
        self._on_call = on_call
        self._client_id = client_id
        self._client_secret = client_secret
        self._budget = budget
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"WithingsClient(base_url={str(self._http.base_url)!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- OAuth (§1.3, §1.4) ----------------------------------------------------------------

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        """Trade an authorization code for tokens. Never retried: a code is single-use, 30 s."""
        form = {
            **self._credentials(),
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
        }
        body = await self._send("/v2/oauth2", "requesttoken", form, token_request=True)
        return self._token_set(body)

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Rotate tokens; the caller must persist the returned refresh token before anything else.

        Retried only when the request surely never reached Withings (connection not made).
        Once any answer or a read timeout happened, Withings may already have rotated: the
        caller decides (the old refresh token stays valid up to 8 h, but resending the same
        arguments within 10 s earns a 601).
        """
        form = {
            **self._credentials(),
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        for attempt in range(1, self._retry.attempts + 1):
            try:
                body = await self._send("/v2/oauth2", "requesttoken", form, token_request=True)
            except WithingsTransient as error:
                if not isinstance(error.__cause__, _NOT_SENT) or attempt == self._retry.attempts:
                    raise
                await self._pause("requesttoken", attempt, error)
                continue
            return self._token_set(body)
        raise AssertionError("unreachable: the loop returns or raises")

    # -- Data (§3, §4) ---------------------------------------------------------------------

    async def get_measures(
        self,
        access_token: str,
        *,
        lastupdate: int | None = None,
        startdate: int | None = None,
        enddate: int | None = None,
        meastypes: Sequence[int] | None = None,
        category: int = 1,
        offset: int | None = None,
    ) -> MeasurePage:
        """One page of getmeas; follow `more`/`offset` for the rest."""
        form: Form = {
            "meastypes": ",".join(str(t) for t in meastypes) if meastypes else None,
            "category": category,
            "lastupdate": lastupdate,
            "startdate": startdate,
            "enddate": enddate,
            "offset": offset,
        }
        body = await self._data_call("/measure", "getmeas", access_token, form)
        timezone = body.get("timezone")
        updatetime = body.get("updatetime")
        return MeasurePage(
            groups=list(body.get("measuregrps") or []),
            timezone=str(timezone) if timezone is not None else None,
            more=bool(body.get("more")),
            offset=int(body.get("offset") or 0),
            updatetime=int(updatetime) if updatetime is not None else None,
        )

    async def get_activity(
        self,
        access_token: str,
        *,
        lastupdate: int | None = None,
        startdateymd: str | None = None,
        enddateymd: str | None = None,
        offset: int | None = None,
    ) -> SeriesPage:
        """One page of daily activity rows (`date` is the user's local day)."""
        window = {"lastupdate": lastupdate, "startdateymd": startdateymd, "enddateymd": enddateymd}
        return await self._series(
            ("/v2/measure", "getactivity", "activities"),
            ACTIVITY_FIELDS,
            access_token,
            window,
            offset,
        )

    async def get_sleep_summary(
        self,
        access_token: str,
        *,
        lastupdate: int | None = None,
        startdateymd: str | None = None,
        enddateymd: str | None = None,
        offset: int | None = None,
    ) -> SeriesPage:
        """One page of nightly sleep summaries."""
        window = {"lastupdate": lastupdate, "startdateymd": startdateymd, "enddateymd": enddateymd}
        return await self._series(
            ("/v2/sleep", "getsummary", "series"),
            SLEEP_SUMMARY_FIELDS,
            access_token,
            window,
            offset,
        )

    async def _series(
        self,
        endpoint: tuple[str, str, str],
        fields: Sequence[str],
        access_token: str,
        window: dict[str, int | str | None],
        offset: int | None,
    ) -> SeriesPage:
        """getactivity and getsummary share their paging and window parameters (§4.1, §4.5)."""
        path, action, rows_key = endpoint
        form: Form = {**window, "offset": offset, "data_fields": ",".join(fields)}
        body = await self._data_call(path, action, access_token, form)
        return _series_page(body, rows_key)

    async def get_devices(self, access_token: str) -> list[dict[str, Any]]:
        body = await self._data_call("/v2/user", "getdevice", access_token, {})
        return list(body.get("devices") or [])

    # -- Notifications (§5.1) --------------------------------------------------------------

    async def subscribe(
        self, access_token: str, callbackurl: str, appli: int, comment: str
    ) -> None:
        """Withings HEAD-probes `callbackurl` first; a failed probe is status 293."""
        form: Form = {"callbackurl": callbackurl, "appli": appli, "comment": comment}
        await self._data_call("/notify", "subscribe", access_token, form)

    async def list_subscriptions(
        self, access_token: str, appli: int | None = None
    ) -> list[dict[str, Any]]:
        body = await self._data_call("/notify", "list", access_token, {"appli": appli})
        return list(body.get("profiles") or [])

    async def revoke_subscription(self, access_token: str, callbackurl: str, appli: int) -> None:
        form: Form = {"callbackurl": callbackurl, "appli": appli}
        await self._data_call("/notify", "revoke", access_token, form)

    # -- plumbing --------------------------------------------------------------------------

    def _credentials(self) -> dict[str, str]:
        if not self._client_id or not self._client_secret:
            raise ConfigError(["WITHINGS_CLIENT_ID and WITHINGS_CLIENT_SECRET are required"])
        return {"client_id": self._client_id, "client_secret": self._client_secret}

    def _token_set(self, body: dict[str, Any]) -> TokenSet:
        try:
            return TokenSet.from_body(body, now=self._clock())
        except (KeyError, TypeError, ValueError) as error:
            raise WithingsTransient("Withings requesttoken answered without token fields") from (
                error
            )

    async def _data_call(
        self, path: str, action: str, access_token: str, form: Form
    ) -> dict[str, Any]:
        """A Bearer-authenticated call, retried on transient failures and 601 (§2.2, §2.3)."""
        headers = {"Authorization": f"Bearer {access_token}"}
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return await self._send(path, action, form, headers=headers)
            except WithingsRateLimited as error:
                hint = error.wait_seconds
                if attempt == self._retry.attempts or (
                    hint is not None and hint > self._retry.max_rate_limit_wait
                ):
                    raise
                await self._pause(action, attempt, error, wait=hint)
            except WithingsTransient as error:
                if attempt == self._retry.attempts:
                    raise
                await self._pause(action, attempt, error)
        raise AssertionError("unreachable: the loop returns or raises")

    async def _pause(
        self, action: str, attempt: int, error: WithingsError, wait: float | None = None
    ) -> None:
        delay = wait if wait is not None else self._retry.backoff(attempt, self._random)
        logger.warning(
            "withings %s attempt %d failed (%s); retrying in %.2f s",
            action,
            attempt,
            type(error).__name__,
            delay,
        )
        await self._sleep(delay)

    async def _send(
        self,
        path: str,
        action: str,
        form: Form,
        *,
        headers: Mapping[str, str] | None = None,
        token_request: bool = False,
    ) -> dict[str, Any]:
        """One POST; returns the envelope's body or raises the exception its status maps to."""
        if self._budget is not None:
            await self._budget.acquire()
        data = {"action": action, **{k: str(v) for k, v in form.items() if v is not None}}
        started = time.monotonic()
        try:
            response = await self._http.post(path, data=data, headers=headers)
        except httpx.TransportError as error:
            # The exception text of httpx never holds the form, but keep only the class name.
            logger.warning("withings POST %s %s: %s", path, action, type(error).__name__)
            self._report(action, "transport")
            raise WithingsTransient(f"Withings {action} failed: {type(error).__name__}") from error
        elapsed_ms = (time.monotonic() - started) * 1000
        if response.status_code != 200:
            # Withings answers HTTP 200 even for errors (§2.1): anything else is the edge failing.
            logger.warning("withings POST %s %s: HTTP %d", path, action, response.status_code)
            self._report(action, f"http_{response.status_code}")
            raise WithingsTransient(f"Withings {action} failed: HTTP {response.status_code}")
        try:
            envelope = response.json()
        except ValueError as error:
            logger.warning("withings POST %s %s: non-JSON answer", path, action)
            self._report(action, "malformed")
            raise WithingsTransient(f"Withings {action} answered non-JSON") from error
        status = envelope.get("status") if isinstance(envelope, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            logger.warning("withings POST %s %s: envelope without status", path, action)
            self._report(action, "malformed")
            raise WithingsTransient(f"Withings {action} answered without a status")
        raw_body = envelope.get("body")
        body: dict[str, Any] = raw_body if isinstance(raw_body, dict) else {}
        logger.info("withings POST %s %s status=%d in %.0f ms", path, action, status, elapsed_ms)
        self._report(action, status)
        if status != 0:
            error_text = envelope.get("error")
            raise exception_for(
                status,
                error_text if isinstance(error_text, str) else "",
                body,
                action=action,
                token_request=token_request,
            )
        return body

    def _report(self, action: str, status: int | str) -> None:
        if self._on_call is not None:
            self._on_call(action, status)


def _series_page(body: dict[str, Any], rows_key: str) -> SeriesPage:
    return SeriesPage(
        rows=list(body.get(rows_key) or []),
        more=bool(body.get("more")),
        offset=int(body.get("offset") or 0),
    )


def make_withings_client(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    budget: RequestBudget | None = None,
    on_call: OnCall | None = None,
) -> WithingsClient:
    """The production client: settings' base URL and credentials, an optional shared budget."""
    http = httpx.AsyncClient(base_url=settings.withings_api_url, transport=transport, timeout=10)
    return WithingsClient(
        http,
        client_id=settings.withings_client_id,
        client_secret=settings.withings_client_secret,
        budget=budget,
        on_call=on_call,
    )
