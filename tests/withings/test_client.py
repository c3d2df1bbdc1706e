"""WithingsClient against the sandbox: OAuth rotation, envelopes, retries, paging, secrecy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from fhir_gateway.config import Settings
from fhir_gateway.errors import (
    ConfigError,
    WithingsAuthError,
    WithingsError,
    WithingsInvalidGrant,
    WithingsInvalidParams,
    WithingsRateLimited,
    WithingsTransient,
    WithingsUnauthorizedService,
)
from fhir_gateway.withings.client import RetryPolicy, WithingsClient, make_withings_client
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.sandbox import create_sandbox
from fhir_gateway.withings.sandbox_state import (
    ACCESS_TOKEN_SECONDS,
    ROTATION_GRACE_SECONDS,
    SandboxState,
)
from fhir_gateway.withings.status import (
    STATUS_FAMILIES,
    StatusFamily,
    exception_for,
    family_of,
)

CLIENT_ID = "sandbox-app"
CLIENT_SECRET = "s3cret-client-value-never-logged"
REDIRECT_URI = "https://gateway.example/oauth/callback"
ALL_SCOPES = "user.info,user.metrics,user.activity"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingBudget:
    def __init__(self) -> None:
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1


class FailFirstTransport(httpx.AsyncBaseTransport):
    """Raises the given network errors on the first requests, then forwards to `inner`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *errors: Exception) -> None:
        self.inner = inner
        self.errors = list(errors)
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.handle_async_request(request)


class Harness:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.clock = FakeClock()
        self.state = SandboxState(clock=self.clock)
        self.state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
        self.sandbox_transport = httpx.ASGITransport(app=create_sandbox(self.state))
        self.sleeps: list[float] = []
        self.budget = CountingBudget()
        self.client = self.make_client(transport or self.sandbox_transport)

    def make_client(self, transport: httpx.AsyncBaseTransport) -> WithingsClient:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        http = httpx.AsyncClient(transport=transport, base_url="http://sandbox.test")
        return WithingsClient(
            http,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            budget=self.budget,
            sleep=sleep,
            random=lambda: 0.5,
            clock=self.clock,
            retry=RetryPolicy(attempts=3, base_delay=1.0, max_delay=30.0, max_rate_limit_wait=60),
        )

    async def connect(self, scope: str = ALL_SCOPES, userid: str | None = None) -> TokenSet:
        code = self.state.authorize(CLIENT_ID, REDIRECT_URI, scope, userid)
        return await self.client.exchange_code(code, REDIRECT_URI)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.client.aclose()


# -- status families ---------------------------------------------------------------------------


def test_status_families_are_disjoint() -> None:
    seen: dict[int, StatusFamily] = {}
    for family, codes in STATUS_FAMILIES.items():
        for code in codes:
            assert code not in seen, f"{code} in {seen.get(code)} and {family}"
            seen[code] = family


@pytest.mark.parametrize(
    ("status", "family"),
    [
        (0, StatusFamily.SUCCESS),
        (100, StatusFamily.AUTHENTICATION_FAILED),
        (102, StatusFamily.AUTHENTICATION_FAILED),
        (401, StatusFamily.AUTHENTICATION_FAILED),
        (201, StatusFamily.INVALID_PARAMS),
        (293, StatusFamily.INVALID_PARAMS),
        (503, StatusFamily.INVALID_PARAMS),
        (3019, StatusFamily.INVALID_PARAMS),
        (214, StatusFamily.UNAUTHORIZED),
        (2555, StatusFamily.UNAUTHORIZED),
        (2554, StatusFamily.NOT_IMPLEMENTED),
        (522, StatusFamily.TIMEOUT),
        (524, StatusFamily.BAD_STATE),
        (601, StatusFamily.TOO_MANY_REQUESTS),
        (215, StatusFamily.ERROR_OCCURRED),
        (5003, StatusFamily.ERROR_OCCURRED),
        (10000, StatusFamily.ERROR_OCCURRED),
        (4242, StatusFamily.UNKNOWN),
    ],
)
def test_family_of_follows_the_spec_table(status: int, family: StatusFamily) -> None:
    assert family_of(status) is family


@pytest.mark.parametrize(
    ("status", "error", "token_request", "expected"),
    [
        (401, "invalid_token", False, WithingsAuthError),
        (100, "", False, WithingsAuthError),
        (503, "Invalid Params: invalid code", True, WithingsInvalidGrant),
        (503, "Invalid Params: invalid refresh_token", True, WithingsInvalidGrant),
        (503, "Invalid Params: invalid client_id", True, WithingsInvalidParams),
        (503, "Invalid Params: invalid grant_type", True, WithingsInvalidParams),
        (503, "Invalid Params: invalid code", False, WithingsInvalidParams),
        (293, "The callback URL is either unknown or invalid", False, WithingsInvalidParams),
        (2554, "Not implemented", False, WithingsInvalidParams),
        (277, "", False, WithingsUnauthorizedService),
        (601, "Too many request", False, WithingsRateLimited),
        (522, "Timeout", False, WithingsTransient),
        (2556, "An error occurred", False, WithingsTransient),
        (4242, "never seen", False, WithingsTransient),
    ],
)
def test_exception_for_maps_families_to_classes(
    status: int, error: str, token_request: bool, expected: type[WithingsError]
) -> None:
    exc = exception_for(status, error, {}, action="requesttoken", token_request=token_request)
    assert type(exc) is expected
    assert str(status) in str(exc)


def test_exception_for_reads_wait_seconds_and_masks_token_like_text() -> None:
    token = "a075f8c14fb8df40b08ebc8508533dc332a6910a"
    exc = exception_for(601, f"slow down {token}", {"wait_seconds": 188}, action="getmeas")
    assert isinstance(exc, WithingsRateLimited)
    assert exc.wait_seconds == 188
    assert token not in str(exc)
    assert "[redacted]" in str(exc)


# -- OAuth ---------------------------------------------------------------------------------------


async def test_exchange_code_returns_string_userid_and_expiry(harness: Harness) -> None:
    tokens = await harness.connect()
    assert isinstance(tokens.userid, str) and tokens.userid in harness.state.users
    assert tokens.expires_at == START + ACCESS_TOKEN_SECONDS
    assert tokens.scope == ALL_SCOPES
    assert harness.state.calls["requesttoken"] == 1
    assert tokens.access_token not in repr(tokens)


async def test_code_expires_after_30_seconds_and_is_not_retried(harness: Harness) -> None:
    code = harness.state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    harness.clock.advance(31)
    with pytest.raises(WithingsInvalidGrant):
        await harness.client.exchange_code(code, REDIRECT_URI)
    assert harness.state.calls["requesttoken"] == 1
    assert harness.sleeps == []


async def test_code_is_single_use(harness: Harness) -> None:
    code = harness.state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    await harness.client.exchange_code(code, REDIRECT_URI)
    with pytest.raises(WithingsRateLimited) as same_arguments:  # within 10 s: 601 first
        await harness.client.exchange_code(code, REDIRECT_URI)
    assert same_arguments.value.wait_seconds == 10
    harness.clock.advance(11)
    with pytest.raises(WithingsInvalidGrant):
        await harness.client.exchange_code(code, REDIRECT_URI)
    assert harness.state.calls["requesttoken"] == 3


async def test_exchange_is_not_retried_on_transient_failure(harness: Harness) -> None:
    code = harness.state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    harness.state.fail_next("requesttoken", 522)
    with pytest.raises(WithingsTransient):
        await harness.client.exchange_code(code, REDIRECT_URI)
    assert harness.state.calls["requesttoken"] == 1


async def test_refresh_rotates_and_old_token_survives_within_grace(harness: Harness) -> None:
    first = await harness.connect()
    harness.clock.advance(60)
    second = await harness.client.refresh(first.refresh_token)
    assert second.userid == first.userid
    assert second.access_token != first.access_token
    assert second.refresh_token != first.refresh_token
    harness.clock.advance(ROTATION_GRACE_SECONDS - 120)  # new access token still unused
    third = await harness.client.refresh(first.refresh_token)
    assert third.refresh_token not in {first.refresh_token, second.refresh_token}


async def test_old_refresh_token_dies_after_eight_hours(harness: Harness) -> None:
    first = await harness.connect()
    await harness.client.refresh(first.refresh_token)
    harness.clock.advance(ROTATION_GRACE_SECONDS + 1)
    with pytest.raises(WithingsInvalidGrant):
        await harness.client.refresh(first.refresh_token)


async def test_old_refresh_token_dies_when_new_access_token_is_used(harness: Harness) -> None:
    first = await harness.connect()
    second = await harness.client.refresh(first.refresh_token)
    assert len(await harness.client.get_devices(second.access_token)) == 5
    harness.clock.advance(11)
    with pytest.raises(WithingsInvalidGrant):
        await harness.client.refresh(first.refresh_token)
    harness.clock.advance(11)
    assert (await harness.client.refresh(second.refresh_token)).userid == first.userid


async def test_refresh_is_not_retried_once_withings_answered(harness: Harness) -> None:
    first = await harness.connect()
    harness.state.fail_next("requesttoken", 522)
    with pytest.raises(WithingsTransient):
        await harness.client.refresh(first.refresh_token)
    assert harness.state.calls["requesttoken"] == 2  # the exchange + one refresh
    assert harness.sleeps == []


async def test_refresh_is_retried_when_the_connection_never_opened() -> None:
    harness = Harness()
    flaky = FailFirstTransport(harness.sandbox_transport)
    harness.client = harness.make_client(flaky)
    first = await harness.connect()
    flaky.errors.append(httpx.ConnectError("refused"))
    second = await harness.client.refresh(first.refresh_token)
    assert second.userid == first.userid
    assert harness.sleeps == [0.5]
    assert flaky.requests == 3  # the exchange, the refused refresh, the refresh
    assert harness.state.calls["requesttoken"] == 2  # only two ever reached Withings
    await harness.client.aclose()


async def test_refresh_is_not_retried_after_a_read_timeout() -> None:
    harness = Harness()
    flaky = FailFirstTransport(harness.sandbox_transport)
    harness.client = harness.make_client(flaky)
    first = await harness.connect()
    flaky.errors.append(httpx.ReadTimeout("no answer"))
    with pytest.raises(WithingsTransient):
        await harness.client.refresh(first.refresh_token)
    assert flaky.requests == 2  # the exchange and a single refresh attempt
    await harness.client.aclose()


async def test_exchange_is_not_retried_on_connect_error() -> None:
    harness = Harness()
    flaky = FailFirstTransport(harness.sandbox_transport, httpx.ConnectError("refused"))
    harness.client = harness.make_client(flaky)
    with pytest.raises(WithingsTransient):
        await harness.connect()
    assert flaky.requests == 1
    await harness.client.aclose()


async def test_token_calls_need_configured_credentials() -> None:
    settings = Settings(withings_api_url="http://sandbox.test")
    client = make_withings_client(settings, httpx.MockTransport(lambda _: httpx.Response(500)))
    with pytest.raises(ConfigError):
        await client.exchange_code("code", REDIRECT_URI)
    await client.aclose()


async def test_make_withings_client_talks_to_the_settings_base_url() -> None:
    state = SandboxState(clock=FakeClock())
    state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    seen: list[str] = []
    sandbox = httpx.ASGITransport(app=create_sandbox(state))

    async def forward(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return await sandbox.handle_async_request(request)

    settings = Settings(
        withings_api_url="https://withings.sandbox.test",
        withings_client_id=CLIENT_ID,
        withings_client_secret=CLIENT_SECRET,
    )
    client = make_withings_client(settings, httpx.MockTransport(forward))
    code = state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    tokens = await client.exchange_code(code, REDIRECT_URI)
    assert tokens.userid in state.users
    assert seen == ["https://withings.sandbox.test/v2/oauth2"]
    await client.aclose()


# -- data calls: errors and retries --------------------------------------------------------------


async def test_expired_access_token_raises_auth_error_at_once(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.clock.advance(ACCESS_TOKEN_SECONDS + 1)
    with pytest.raises(WithingsAuthError) as caught:
        await harness.client.get_measures(tokens.access_token)
    assert not isinstance(caught.value, WithingsInvalidGrant)
    assert "401" in str(caught.value)
    assert harness.state.calls["getmeas"] == 1
    assert harness.sleeps == []


async def test_unknown_access_token_is_401(harness: Harness) -> None:
    with pytest.raises(WithingsAuthError):
        await harness.client.get_devices("0" * 40)


async def test_rate_limit_waits_the_hinted_seconds_then_succeeds(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getmeas", 601, wait_seconds=7)
    page = await harness.client.get_measures(tokens.access_token)
    assert page.groups
    assert harness.sleeps == [7]
    assert harness.state.calls["getmeas"] == 2


async def test_rate_limit_without_hint_backs_off(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getdevice", 601)
    assert await harness.client.get_devices(tokens.access_token)
    assert harness.sleeps == [0.5]


async def test_rate_limit_longer_than_the_cap_is_raised_for_the_caller(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getmeas", 601, wait_seconds=188)
    with pytest.raises(WithingsRateLimited) as caught:
        await harness.client.get_measures(tokens.access_token)
    assert caught.value.wait_seconds == 188
    assert harness.sleeps == []
    assert harness.state.calls["getmeas"] == 1


async def test_transient_failures_retry_with_full_jitter(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getmeas", 522)
    harness.state.fail_next("getmeas", 2556)
    page = await harness.client.get_measures(tokens.access_token)
    assert page.groups
    # random() = 0.5 → half of base·2^0 then half of base·2^1
    assert harness.sleeps == [0.5, 1.0]
    assert harness.state.calls["getmeas"] == 3
    assert harness.budget.acquired == 4  # the exchange + three attempts


async def test_transient_failures_give_up_after_the_attempts(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getactivity", 522, times=3)
    with pytest.raises(WithingsTransient):
        await harness.client.get_activity(tokens.access_token, lastupdate=0)
    assert harness.state.calls["getactivity"] == 3
    assert len(harness.sleeps) == 2


async def test_invalid_params_raise_at_once(harness: Harness) -> None:
    tokens = await harness.connect()
    harness.state.fail_next("getmeas", 503)
    with pytest.raises(WithingsInvalidParams):
        await harness.client.get_measures(tokens.access_token)
    assert harness.state.calls["getmeas"] == 1
    assert harness.sleeps == []


async def test_missing_scope_is_unauthorized_service(harness: Harness) -> None:
    tokens = await harness.connect(scope="user.metrics")
    with pytest.raises(WithingsUnauthorizedService):
        await harness.client.get_sleep_summary(tokens.access_token, lastupdate=0)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json={"body": {}}),
    ],
)
async def test_broken_answers_are_transient(response: httpx.Response) -> None:
    harness = Harness(httpx.MockTransport(lambda _: response))
    with pytest.raises(WithingsTransient):
        await harness.client.get_devices("token")
    assert len(harness.sleeps) == 2
    await harness.client.aclose()


# -- data calls: content and paging --------------------------------------------------------------


async def _all_measure_pages(
    client: WithingsClient, access_token: str, **query: Any
) -> tuple[list[dict[str, Any]], int]:
    groups: list[dict[str, Any]] = []
    pages = 0
    offset: int | None = None
    while True:
        page = await client.get_measures(access_token, offset=offset, **query)
        pages += 1
        groups.extend(page.groups)
        if not page.more:
            return groups, pages
        offset = page.offset


async def test_getmeas_paging_returns_every_real_group_once(harness: Harness) -> None:
    tokens = await harness.connect()
    groups, pages = await _all_measure_pages(harness.client, tokens.access_token)
    grpids = [g["grpid"] for g in groups]
    assert len(grpids) == len(set(grpids)) == 2062 + 34
    assert set(grpids) == set(harness.state.user(tokens.userid).measure_groups)
    assert pages == 11  # 2096 groups, 200 per page


async def test_getmeas_meastypes_filter(harness: Harness) -> None:
    tokens = await harness.connect()
    groups, _ = await _all_measure_pages(harness.client, tokens.access_token, meastypes=[9, 10])
    assert groups
    assert all({m["type"] for m in g["measures"]} <= {9, 10} for g in groups)


async def test_lastupdate_returns_only_changed_groups_and_deletions_vanish(
    harness: Harness,
) -> None:
    tokens = await harness.connect()
    first = await harness.client.get_measures(tokens.access_token)
    assert first.updatetime == int(START)
    userid = tokens.userid
    grpids = list(harness.state.user(userid).measure_groups)
    harness.clock.advance(3600)
    harness.state.change_measure_group(
        userid, grpids[0], measures=[{"value": 70000, "type": 1, "unit": -3}]
    )
    added = harness.state.add_measure_group(
        userid, {"measures": [{"value": 12000, "type": 10, "unit": -2}], "attrib": 0}
    )
    harness.state.delete_measure_group(userid, grpids[1])

    changed = await harness.client.get_measures(tokens.access_token, lastupdate=first.updatetime)
    assert sorted(g["grpid"] for g in changed.groups) == sorted([grpids[0], added])
    assert not changed.more

    everything, _ = await _all_measure_pages(harness.client, tokens.access_token)
    remaining = {g["grpid"] for g in everything}
    assert grpids[1] not in remaining
    assert added in remaining and len(remaining) == len(grpids)


async def test_sleep_summary_pages_with_requested_fields(harness: Harness) -> None:
    harness.state.series_page_size = 120
    tokens = await harness.connect()
    rows: list[dict[str, Any]] = []
    offset: int | None = None
    pages = 0
    while True:
        page = await harness.client.get_sleep_summary(
            tokens.access_token, lastupdate=0, offset=offset
        )
        rows.extend(page.rows)
        pages += 1
        if not page.more:
            break
        offset = page.offset
    assert pages == 3
    assert len({r["id"] for r in rows}) == len(rows) == 300
    assert "hr_average" in rows[0]["data"] and "sleep_score" in rows[0]["data"]


async def test_activity_by_day_range(harness: Harness) -> None:
    tokens = await harness.connect()
    everything = await harness.client.get_activity(tokens.access_token, lastupdate=0)
    days = sorted(r["date"] for r in everything.rows)
    assert len(days) == 2
    one_day = await harness.client.get_activity(
        tokens.access_token, startdateymd=days[1], enddateymd=days[1]
    )
    assert [r["date"] for r in one_day.rows] == [days[1]]
    assert one_day.rows[0]["steps"] > 0


async def test_get_devices_returns_the_real_device_list(harness: Harness) -> None:
    tokens = await harness.connect()
    devices = await harness.client.get_devices(tokens.access_token)
    assert {d["type"] for d in devices} == {"Scale", "Sleep Monitor"}


# -- notifications --------------------------------------------------------------------------------


CALLBACK = "https://gateway.example/webhooks/withings/abc"


def _callback_server(ok_urls: set[str], seen: list[str]) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(200 if str(request.url) in ok_urls else 404)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_subscribe_list_revoke(harness: Harness) -> None:
    probes: list[str] = []
    harness.state.probe_client = _callback_server({CALLBACK}, probes)
    tokens = await harness.connect()
    await harness.client.subscribe(tokens.access_token, CALLBACK, 1, "weight")
    await harness.client.subscribe(tokens.access_token, CALLBACK, 44, "sleep")
    assert probes == [f"HEAD {CALLBACK}", f"HEAD {CALLBACK}"]
    profiles = await harness.client.list_subscriptions(tokens.access_token)
    assert profiles == [
        {"appli": 1, "callbackurl": CALLBACK, "expires": 2147483647, "comment": "weight"},
        {"appli": 44, "callbackurl": CALLBACK, "expires": 2147483647, "comment": "sleep"},
    ]
    assert len(await harness.client.list_subscriptions(tokens.access_token, appli=44)) == 1
    await harness.client.revoke_subscription(tokens.access_token, CALLBACK, 1)
    remaining = await harness.client.list_subscriptions(tokens.access_token)
    assert [p["appli"] for p in remaining] == [44]
    with pytest.raises(WithingsInvalidParams):
        await harness.client.revoke_subscription(tokens.access_token, CALLBACK, 1)
    await harness.state.probe_client.aclose()


async def test_subscribe_fails_with_293_when_the_probe_fails(harness: Harness) -> None:
    probes: list[str] = []
    harness.state.probe_client = _callback_server(set(), probes)
    tokens = await harness.connect()
    with pytest.raises(WithingsInvalidParams) as caught:
        await harness.client.subscribe(tokens.access_token, CALLBACK, 1, "weight")
    assert "293" in str(caught.value)
    assert probes == [f"HEAD {CALLBACK}"]
    assert await harness.client.list_subscriptions(tokens.access_token) == []
    await harness.state.probe_client.aclose()


# -- secrecy -----------------------------------------------------------------------------------


async def test_no_secret_reaches_logs_or_exception_text(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code = harness.state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    tokens = await harness.client.exchange_code(code, REDIRECT_URI)
    errors: list[BaseException] = []
    attempts: list[tuple[float, Callable[[], Awaitable[TokenSet]]]] = [
        (11, lambda: harness.client.exchange_code(code, REDIRECT_URI)),  # reused code
        (11, lambda: harness.client.refresh(tokens.refresh_token)),
        (0, lambda: harness.client.refresh(tokens.refresh_token)),  # same arguments → 601
    ]
    for pause, call in attempts:
        harness.clock.advance(pause)
        try:
            await call()
        except WithingsError as error:
            errors.append(error)
    harness.state.fail_next("getmeas", 522, times=3)
    with pytest.raises(WithingsTransient) as transient:
        await harness.client.get_measures(tokens.access_token)
    harness.clock.advance(ACCESS_TOKEN_SECONDS)
    with pytest.raises(WithingsAuthError) as auth:
        await harness.client.get_measures(tokens.access_token)
    errors += [transient.value, auth.value]
    assert len(errors) == 4
    assert any(r.name == "fhir_gateway.withings" for r in caplog.records)
    texts = [caplog.text, repr(harness.client), *(str(e) for e in errors)]
    texts += [repr(e) for e in errors]
    for secret in (CLIENT_SECRET, code, tokens.access_token, tokens.refresh_token):
        assert all(secret not in text for text in texts)


# -- the per-call hook (metrics) -----------------------------------------------------------


async def test_every_request_reports_its_action_and_outcome_to_on_call() -> None:
    harness = Harness()
    seen: list[tuple[str, int | str]] = []
    broken = [httpx.Response(502, text="bad gateway"), httpx.Response(200, text="<html>")]

    async def edge(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        if form.get("action") == "getdevice" and broken:  # a broken proxy, twice
            return broken.pop(0)
        return await harness.sandbox_transport.handle_async_request(request)

    failing = FailFirstTransport(httpx.MockTransport(edge), httpx.ConnectError("refused"))
    client = WithingsClient(
        httpx.AsyncClient(transport=failing, base_url="http://sandbox.test"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        sleep=lambda seconds: asyncio.sleep(0),
        on_call=lambda action, status: seen.append((action, status)),
    )
    code = harness.state.authorize(CLIENT_ID, REDIRECT_URI, ALL_SCOPES)
    with pytest.raises(WithingsTransient):
        await client.exchange_code(code, REDIRECT_URI)  # never retried: codes are single-use
    tokens = await client.exchange_code(code, REDIRECT_URI)
    harness.state.fail_next("getmeas", 601, wait_seconds=2)
    await client.get_measures(tokens.access_token)
    await client.get_devices(tokens.access_token)
    await client.aclose()
    assert seen == [
        ("requesttoken", "transport"),
        ("requesttoken", 0),
        ("getmeas", 601),
        ("getmeas", 0),
        ("getdevice", "http_502"),
        ("getdevice", "malformed"),
        ("getdevice", 0),
    ]
