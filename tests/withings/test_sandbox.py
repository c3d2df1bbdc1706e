"""The sandbox's own contract: raw envelopes, the consent page, seeding, filters, notifications."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from fhir_gateway.withings.sandbox import create_sandbox
from fhir_gateway.withings.sandbox_state import GRPID_STRIDE, INVALID_TOKEN_TEXT, SandboxState

CLIENT_ID = "sandbox-app"
CLIENT_SECRET = "sandbox-secret"
REDIRECT_URI = "https://gateway.example/oauth/callback"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sandbox:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.state = SandboxState(clock=self.clock)
        self.state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_sandbox(self.state)),
            base_url="http://sandbox.test",
        )

    async def post(self, path: str, token: str | None = None, **form: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(path, data=form, headers=headers)
        assert response.status_code == 200  # always, errors included (§2.1)
        envelope: dict[str, Any] = response.json()
        return envelope

    async def token_body(self, scope: str = "user.info,user.metrics,user.activity") -> Any:
        code = self.state.authorize(CLIENT_ID, REDIRECT_URI, scope)
        envelope = await self.post(
            "/v2/oauth2",
            action="requesttoken",
            grant_type="authorization_code",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            code=code,
            redirect_uri=REDIRECT_URI,
        )
        assert envelope["status"] == 0
        return envelope["body"]

    async def token(self) -> str:
        return str((await self.token_body())["access_token"])


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox()
    yield sandbox
    await sandbox.http.aclose()


def _fixture_groups() -> list[dict[str, Any]]:
    folder = files("fhir_gateway.withings") / "sandbox_data"
    groups: list[dict[str, Any]] = []
    for name in ("measurement_list.json", "measurement_list_2.json"):
        groups += json.loads((folder / name).read_text(encoding="utf-8"))
    return groups


# -- OAuth -----------------------------------------------------------------------------------------


async def test_token_body_matches_the_spec_shape(sandbox: Sandbox) -> None:
    body = await sandbox.token_body()
    assert isinstance(body["userid"], int)  # the SPEC's integer; the client stringifies
    assert str(body["userid"]) in sandbox.state.users
    assert body["expires_in"] == 10800
    assert body["token_type"] == "Bearer"
    assert len(body["access_token"]) == len(body["refresh_token"]) == 40
    assert set(body) == {
        "userid", "access_token", "refresh_token", "expires_in", "scope", "csrf_token",
        "token_type",
    }  # fmt: skip


async def test_bad_code_is_503_invalid_code(sandbox: Sandbox) -> None:
    envelope = await sandbox.post(
        "/v2/oauth2",
        action="requesttoken",
        grant_type="authorization_code",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        code="0" * 40,
        redirect_uri=REDIRECT_URI,
    )
    assert envelope == {"status": 503, "error": "Invalid Params: invalid code"}


async def test_wrong_redirect_uri_or_secret_is_refused(sandbox: Sandbox) -> None:
    code = sandbox.state.authorize(CLIENT_ID, REDIRECT_URI, "user.metrics")
    form = {
        "action": "requesttoken",
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": "wrong",
        "code": code,
        "redirect_uri": REDIRECT_URI,
    }
    assert (await sandbox.post("/v2/oauth2", **form))["status"] == 503
    form.update(client_secret=CLIENT_SECRET, redirect_uri="https://evil.example/cb")
    assert (await sandbox.post("/v2/oauth2", **form))[
        "error"
    ] == "Invalid Params: invalid redirect_uri"


async def test_same_token_request_within_ten_seconds_is_601(sandbox: Sandbox) -> None:
    form = {
        "action": "requesttoken",
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": "f" * 40,
    }
    assert (await sandbox.post("/v2/oauth2", **form))["status"] == 503
    sandbox.clock.advance(4)
    envelope = await sandbox.post("/v2/oauth2", **form)
    assert envelope == {
        "status": 601,
        "body": {"wait_seconds": 6},
        "error": "Same arguments in less than 10 seconds",
    }
    sandbox.clock.advance(7)
    assert (await sandbox.post("/v2/oauth2", **form))["status"] == 503
    assert sandbox.state.calls["requesttoken"] == 3


async def test_refreshed_pair_works_and_old_access_token_lives_until_expiry(
    sandbox: Sandbox,
) -> None:
    first = await sandbox.token_body()
    form = {
        "action": "requesttoken",
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": first["refresh_token"],
    }
    second = (await sandbox.post("/v2/oauth2", **form))["body"]
    assert second["userid"] == first["userid"]
    for token in (first["access_token"], second["access_token"]):
        assert (await sandbox.post("/v2/user", token, action="getdevice"))["status"] == 0
    sandbox.clock.advance(10800)
    assert (await sandbox.post("/v2/user", first["access_token"], action="getdevice")) == {
        "status": 401,
        "body": {},
        "error": INVALID_TOKEN_TEXT,
    }


async def test_missing_bearer_is_the_real_401_envelope(sandbox: Sandbox) -> None:
    envelope = await sandbox.post("/measure", action="getmeas")
    assert envelope == {"status": 401, "body": {}, "error": INVALID_TOKEN_TEXT}


async def test_legacy_access_token_form_field_is_accepted(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    envelope = await sandbox.post("/v2/user", action="getdevice", access_token=token)
    assert envelope["status"] == 0


# -- consent page --------------------------------------------------------------------------------


def _authorize_query(**overrides: str) -> dict[str, str]:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scope": "user.metrics,user.activity",
        "state": "opaque-state",
    }
    query.update(overrides)
    return query


async def test_consent_page_lists_users_and_offers_a_demo_user(sandbox: Sandbox) -> None:
    userid = sandbox.state.add_user(seed=False)
    response = await sandbox.http.get("/oauth2_user/authorize2", params=_authorize_query())
    assert response.status_code == 200
    assert _form_target(response) == "http://sandbox.test/oauth2_user/authorize2"
    assert f'value="{userid}"' in response.text
    assert 'value="new"' in response.text


def _form_target(page: httpx.Response) -> str:
    """Where a browser sends the consent form: its action resolved against the page URL."""
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    return urljoin(str(page.url), action.group(1))


async def test_mounted_under_a_prefix_the_consent_and_the_api_work_on_the_mounted_paths() -> None:
    state = SandboxState(clock=FakeClock())
    redirect_uri = "http://host.test/auth/withings/callback"
    state.register_client(CLIENT_ID, CLIENT_SECRET, [redirect_uri])
    userid = state.add_user(seed=False)
    state.add_measure_group(
        userid, {"date": int(START), "measures": [{"value": 70_000, "type": 1, "unit": -3}]}
    )
    host = Starlette(routes=[Mount("/sandbox/withings", app=create_sandbox(state))])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=host), base_url="http://host.test"
    ) as browser:
        query = _authorize_query(redirect_uri=redirect_uri, scope="user.metrics")
        page = await browser.get("/sandbox/withings/oauth2_user/authorize2", params=query)
        assert page.status_code == 200
        target = _form_target(page)
        assert target == "http://host.test/sandbox/withings/oauth2_user/authorize2"
        approved = await browser.post(target, data={**query, "userid": userid})
        assert approved.status_code == 302
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]

        form = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "code": code}
        tokens = await browser.post(
            "/sandbox/withings/v2/oauth2",
            data={**form, "action": "requesttoken", "grant_type": "authorization_code",
                  "redirect_uri": redirect_uri},
        )  # fmt: skip
        assert tokens.json()["status"] == 0
        access_token = tokens.json()["body"]["access_token"]
        measures = await browser.post(
            "/sandbox/withings/measure",
            data={"action": "getmeas"},
            headers={"Authorization": f"Bearer {access_token}"},
        )
    assert measures.json()["status"] == 0
    assert [g["measures"][0]["value"] for g in measures.json()["body"]["measuregrps"]] == [70_000]


@pytest.mark.parametrize(
    "override",
    [
        {"client_id": "nobody"},
        {"redirect_uri": "https://evil.example/cb"},
        {"scope": "user.everything"},
        {"response_type": "token"},
        {"state": ""},
    ],
)
async def test_consent_page_refuses_invalid_requests(
    sandbox: Sandbox, override: dict[str, str]
) -> None:
    response = await sandbox.http.get(
        "/oauth2_user/authorize2", params=_authorize_query(**override)
    )
    assert response.status_code == 400
    assert "evil.example" not in response.headers.get("location", "")


async def test_approval_redirects_with_a_working_code(sandbox: Sandbox) -> None:
    userid = sandbox.state.add_user(seed=False)
    response = await sandbox.http.post(
        "/oauth2_user/authorize2",
        data={**_authorize_query(), "userid": userid, "decision": "allow"},
    )
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == ["opaque-state"]
    envelope = await sandbox.post(
        "/v2/oauth2",
        action="requesttoken",
        grant_type="authorization_code",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        code=query["code"][0],
        redirect_uri=REDIRECT_URI,
    )
    assert str(envelope["body"]["userid"]) == userid
    assert envelope["body"]["scope"] == "user.metrics,user.activity"


async def test_approval_can_create_a_seeded_demo_user(sandbox: Sandbox) -> None:
    response = await sandbox.http.post(
        "/oauth2_user/authorize2", data={**_authorize_query(), "userid": "new", "decision": "allow"}
    )
    assert response.status_code == 302
    (user,) = sandbox.state.users.values()
    assert len(user.measure_groups) == 2096


async def test_denial_redirects_with_access_denied(sandbox: Sandbox) -> None:
    response = await sandbox.http.post(
        "/oauth2_user/authorize2", data={**_authorize_query(), "decision": "deny"}
    )
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query == {"error": ["access_denied"], "state": ["opaque-state"]}
    assert sandbox.state.users == {}


# -- seeding ----------------------------------------------------------------------------------


def test_seeded_users_get_distinct_grpids_and_recent_consistent_dates() -> None:
    clock = FakeClock()
    state = SandboxState(clock=clock)
    first, second = state.add_user(), state.add_user()
    groups_1 = state.user(first).measure_groups
    groups_2 = state.user(second).measure_groups
    assert not set(groups_1) & set(groups_2)
    originals = {g["grpid"]: g for g in _fixture_groups()}
    assert {grpid - GRPID_STRIDE for grpid in groups_1} == set(originals)
    assert {grpid - 2 * GRPID_STRIDE for grpid in groups_2} == set(originals)
    newest = max(g["modified"] for g in groups_1.values())
    assert START - 86400 < newest <= START
    for grpid, group in groups_1.items():
        original = originals[grpid - GRPID_STRIDE]
        shift = group["date"] - original["date"]
        assert shift % 86400 == 0  # whole days: local times of day survive
        assert group["created"] - original["created"] == shift
        assert group["modified"] - original["modified"] == shift
        assert group["measures"] == original["measures"]
    nights = state.user(first).sleep_summaries
    assert len({n["id"] for n in nights}) == 300
    assert all(n["enddate"] <= START for n in nights)


def test_unseeded_user_has_no_data() -> None:
    state = SandboxState(clock=FakeClock())
    userid = state.add_user("12345", seed=False)
    assert userid == "12345"
    assert state.user(userid).measure_groups == {}
    with pytest.raises(ValueError):
        state.add_user("12345")


# -- getmeas -------------------------------------------------------------------------------------


async def test_getmeas_body_fields_and_last_page(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    first = (await sandbox.post("/measure", token, action="getmeas"))["body"]
    assert set(first) == {"updatetime", "timezone", "measuregrps", "more", "offset"}
    assert (first["more"], first["offset"], len(first["measuregrps"])) == (1, 200, 200)
    last = (await sandbox.post("/measure", token, action="getmeas", offset=2000))["body"]
    assert (last["more"], last["offset"], len(last["measuregrps"])) == (0, 0, 96)


async def test_getmeas_filters_by_single_meastype_and_date_range(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    sandbox.state.measure_page_size = 5000
    everything = (await sandbox.post("/measure", token, action="getmeas"))["body"]["measuregrps"]
    weighings = sorted(g["date"] for g in everything if g["measures"][0]["type"] == 1)
    low, high = weighings[10], weighings[40]
    body = (
        await sandbox.post(
            "/measure", token, action="getmeas", meastype=1, startdate=low, enddate=high
        )
    )["body"]
    groups = body["measuregrps"]
    assert groups
    assert all(low <= g["date"] <= high for g in groups)
    assert all([m["type"] for m in g["measures"]] == [1] for g in groups)
    expected = {
        g["grpid"]
        for g in everything
        if low <= g["date"] <= high and any(m["type"] == 1 for m in g["measures"])
    }
    assert {g["grpid"] for g in groups} == expected


async def test_getmeas_lastupdate_is_strictly_after(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    userid = next(iter(sandbox.state.users))
    sandbox.clock.advance(100)
    grpid = sandbox.state.add_measure_group(
        userid, {"measures": [{"value": 80, "type": 11, "unit": 0}]}
    )
    at = int(sandbox.clock())
    after = await sandbox.post("/measure", token, action="getmeas", lastupdate=at - 1)
    assert [g["grpid"] for g in after["body"]["measuregrps"]] == [grpid]
    same_second = await sandbox.post("/measure", token, action="getmeas", lastupdate=at)
    assert same_second["body"]["measuregrps"] == []


async def test_getmeas_category_2_is_goals(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    userid = next(iter(sandbox.state.users))
    goal = sandbox.state.add_measure_group(
        userid, {"category": 2, "measures": [{"value": 70000, "type": 1, "unit": -3}]}
    )
    body = (await sandbox.post("/measure", token, action="getmeas", category=2))["body"]
    assert [g["grpid"] for g in body["measuregrps"]] == [goal]


@pytest.mark.parametrize("field", ["meastypes", "lastupdate", "offset", "startdate"])
async def test_non_numeric_parameters_are_503(sandbox: Sandbox, field: str) -> None:
    token = await sandbox.token()
    envelope = await sandbox.post("/measure", token, action="getmeas", **{field: "weight"})
    assert envelope["status"] == 503


# -- other reads ----------------------------------------------------------------------------


async def test_sleep_summary_without_data_fields_returns_the_default_subset(
    sandbox: Sandbox,
) -> None:
    token = await sandbox.token()
    body = (await sandbox.post("/v2/sleep", token, action="getsummary", lastupdate=0))["body"]
    assert (body["more"], body["offset"], len(body["series"])) == (False, 300, 300)
    data = body["series"][0]["data"]
    assert "deepsleepduration" in data and "hr_average" not in data


async def test_series_endpoints_need_a_range_or_lastupdate(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    assert (await sandbox.post("/v2/sleep", token, action="getsummary"))["status"] == 503
    envelope = await sandbox.post("/v2/measure", token, action="getactivity", startdateymd="x")
    assert envelope["status"] == 503


async def test_activity_lastupdate_and_data_fields(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    userid = next(iter(sandbox.state.users))
    sandbox.clock.advance(60)
    since = int(sandbox.clock()) - 1
    sandbox.state.put_activity(userid, {"date": "2025-12-31", "steps": 4321, "calories": 12.5})
    body = (
        await sandbox.post(
            "/v2/measure", token, action="getactivity", lastupdate=since, data_fields="steps"
        )
    )["body"]
    (row,) = body["activities"]
    assert row["date"] == "2025-12-31" and row["steps"] == 4321
    assert "calories" not in row
    assert row["timezone"] == "Europe/Amsterdam"


async def test_sleep_summaries_can_be_added(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    userid = next(iter(sandbox.state.users))
    sandbox.clock.advance(60)
    night_id = sandbox.state.add_sleep_summary(
        userid,
        {
            "date": "2026-01-01",
            "startdate": int(START) - 28000,
            "enddate": int(START),
            "data": {"total_sleep_time": 25000},
        },
    )
    body = (
        await sandbox.post(
            "/v2/sleep",
            token,
            action="getsummary",
            startdateymd="2026-01-01",
            enddateymd="2026-01-01",
            data_fields="total_sleep_time",
        )
    )["body"]
    assert [(n["id"], n["data"]) for n in body["series"]] == [
        (night_id, {"total_sleep_time": 25000})
    ]


async def test_scope_is_enforced(sandbox: Sandbox) -> None:
    body = await sandbox.token_body(scope="user.metrics")
    token = body["access_token"]
    assert (await sandbox.post("/v2/user", token, action="getdevice"))["status"] == 214
    envelope = await sandbox.post(
        "/notify", token, action="subscribe", callbackurl="https://x.example/cb", appli=44
    )
    assert envelope["status"] == 214


# -- protocol edges and faults -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_non_post_data_calls_are_2554(sandbox: Sandbox, method: str) -> None:
    response = await sandbox.http.request(method, "/measure", params={"action": "getmeas"})
    assert response.status_code == 200
    assert response.json()["status"] == 2554


async def test_unknown_action_is_2554(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    assert (await sandbox.post("/measure", token, action="getunicorns"))["status"] == 2554
    assert (await sandbox.post("/v2/oauth2", action="revoke"))["status"] == 2554


async def test_fault_injection_answers_then_recovers(sandbox: Sandbox) -> None:
    token = await sandbox.token()
    sandbox.state.fail_next("getdevice", 601, times=2, wait_seconds=30)
    sandbox.state.fail_next("getdevice", 522)
    answers = [await sandbox.post("/v2/user", token, action="getdevice") for _ in range(4)]
    assert [a["status"] for a in answers] == [601, 601, 522, 0]
    assert answers[0] == {"status": 601, "body": {"wait_seconds": 30}, "error": "Too many request"}
    assert sandbox.state.calls["getdevice"] == 4


# -- notifications -----------------------------------------------------------------------------


async def test_notify_posts_the_withings_form_to_matching_subscriptions(sandbox: Sandbox) -> None:
    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    callbacks = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    sandbox.state.probe_client = callbacks
    token = await sandbox.token()
    userid = next(iter(sandbox.state.users))
    for appli, url in ((1, "https://a.example/hook"), (4, "https://b.example/hook")):
        envelope = await sandbox.post(
            "/notify", token, action="subscribe", callbackurl=url, appli=appli, comment="c"
        )
        assert envelope == {"status": 0, "body": {}}
    received.clear()

    statuses = await sandbox.state.notify(userid, 1, 1700000000, 1700000100, callbacks)
    assert statuses == [200]
    (request,) = received
    assert request.method == "POST" and str(request.url) == "https://a.example/hook"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "userid": [userid],
        "appli": ["1"],
        "startdate": ["1700000000"],
        "enddate": ["1700000100"],
    }
    assert await sandbox.state.notify("99", 1, 0, 1, callbacks) == []
    await callbacks.aclose()


async def test_subscribe_rejects_an_unreachable_or_overlong_callback(sandbox: Sandbox) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sandbox.state.probe_client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    token = await sandbox.token()
    for url in ("https://down.example/hook", "https://x.example/" + "a" * 250):
        envelope = await sandbox.post(
            "/notify", token, action="subscribe", callbackurl=url, appli=1
        )
        assert envelope == {
            "status": 293,
            "error": "The callback URL is either unknown or invalid",
        }
    await sandbox.state.probe_client.aclose()


async def test_revoking_user_tokens_stops_everything(sandbox: Sandbox) -> None:
    body = await sandbox.token_body()
    userid = str(body["userid"])
    sandbox.state.revoke_user_tokens(userid)
    envelope = await sandbox.post("/v2/user", body["access_token"], action="getdevice")
    assert envelope["status"] == 401
