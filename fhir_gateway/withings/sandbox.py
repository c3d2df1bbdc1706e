"""A faithful Withings simulator as an ASGI app, on the real API's paths (withings-api.md §1-§5).

Every API answer is HTTP 200 with the `{"status": …, "body": …}` envelope, errors included (§2.1).
Serve it at one base URL and point both WITHINGS_API_URL and WITHINGS_AUTHORIZE_URL
(`<base>/oauth2_user/authorize2`) at it.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fhir_gateway.withings.sandbox_state import (
    SandboxError,
    SandboxState,
    SandboxUser,
    invalid_params,
)

__all__ = ["SandboxState", "create_sandbox"]

Params = Mapping[str, str]
Handler = Callable[[SandboxState, Params, str, str], Awaitable[dict[str, Any]]]

ACTIVITY_METRICS = frozenset(
    {
        "steps", "distance", "elevation", "soft", "moderate", "intense", "active", "calories",
        "totalcalories", "hr_average", "hr_min", "hr_max",
        "hr_zone_0", "hr_zone_1", "hr_zone_2", "hr_zone_3",
    }
)  # fmt: skip
# What getsummary returns without data_fields (AIO sleep_summary_no_datafields.json).
SLEEP_DEFAULT_FIELDS = frozenset(
    {
        "wakeupduration", "wakeupcount", "durationtosleep", "remsleepduration",
        "durationtowakeup", "total_timeinbed", "total_sleep_time", "sleep_efficiency",
        "sleep_latency", "wakeup_latency", "waso", "nb_rem_episodes", "out_of_bed_count",
        "lightsleepduration", "deepsleepduration",
    }
)  # fmt: skip
# Scope per appli (§5.3); subscribing needs the scope of the data it announces.
APPLI_SCOPE = {
    1: "user.metrics", 2: "user.metrics", 4: "user.metrics", 16: "user.activity",
    44: "user.activity", 46: "user.info", 50: "user.sleepevents", 51: "user.sleepevents",
    52: "user.sleepevents", 54: "user.metrics", 55: "user.metrics", 58: "user.metrics",
}  # fmt: skip


def envelope(status: int, body: dict[str, Any] | None = None, error: str | None = None) -> Response:
    content: dict[str, Any] = {"status": status}
    if body is not None:
        content["body"] = body
    if error is not None:
        content["error"] = error
    return JSONResponse(content)  # HTTP 200 whatever the status (§2.1)


# -- parameter parsing -------------------------------------------------------------------------


def _int(params: Params, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise invalid_params() from None


def _ints(params: Params, name: str) -> list[int]:
    raw = params.get(name, "")
    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:  # e.g. meastypes=weight → 503 (quantcli/withings-export-cli#24)
        raise invalid_params() from None


def _ymd(params: Params, name: str) -> str | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise invalid_params() from None


def _page(rows: list[dict[str, Any]], offset: int | None, size: int) -> tuple[list[Any], int, bool]:
    start = offset or 0
    page = rows[start : start + size]
    end = start + len(page)
    return page, end, end < len(rows)


# -- data handlers: (state, params, client_id, userid) → body -------------------------------


async def _getmeas(state: SandboxState, params: Params, _: str, userid: str) -> dict[str, Any]:
    user = state.user(userid)
    types = set(_ints(params, "meastypes"))
    single = _int(params, "meastype")
    if single is not None:
        types.add(single)
    category = _int(params, "category") or 1
    startdate, enddate = _int(params, "startdate"), _int(params, "enddate")
    lastupdate = _int(params, "lastupdate")
    selected: list[dict[str, Any]] = []
    for group in user.measure_groups.values():
        if group["category"] != category:
            continue
        # "Updated or created after this date" (§3.1): strictly after, so a sync must not
        # expect a group modified in the very second of its previous `lastupdate` again.
        if lastupdate is not None and group["modified"] <= lastupdate:
            continue
        if startdate is not None and group["date"] < startdate:
            continue
        if enddate is not None and group["date"] > enddate:
            continue
        if types:
            measures = [m for m in group["measures"] if m["type"] in types]
            if not measures:
                continue
            group = {**group, "measures": measures}
        selected.append(group)
    page, end, more = _page(selected, _int(params, "offset"), state.measure_page_size)
    return {
        "updatetime": state.now(),
        "timezone": user.timezone,
        "measuregrps": page,
        "more": int(more),  # getmeas says 0/1 and offset 0 at the end (§3.2)
        "offset": end if more else 0,
    }


def _series(
    state: SandboxState, params: Params, rows: list[dict[str, Any]], day_key: str
) -> tuple[list[dict[str, Any]], int, bool]:
    start, end = _ymd(params, "startdateymd"), _ymd(params, "enddateymd")
    lastupdate = _int(params, "lastupdate")
    if lastupdate is None and (start is None or end is None):
        raise invalid_params()  # §4.1/§4.5: a ymd range or lastupdate is required
    selected = [
        row
        for row in rows
        if (lastupdate is None or row["modified"] > lastupdate)
        and (start is None or row[day_key] >= start)
        and (end is None or row[day_key] <= end)
    ]
    return _page(selected, _int(params, "offset"), state.series_page_size)


def _data_fields(params: Params) -> set[str] | None:
    raw = params.get("data_fields")
    return {f.strip() for f in raw.split(",") if f.strip()} if raw else None


async def _getactivity(state: SandboxState, params: Params, _: str, userid: str) -> dict[str, Any]:
    rows, end, more = _series(state, params, state.user(userid).activities, "date")
    wanted = _data_fields(params)
    if wanted is not None:
        rows = [
            {k: v for k, v in r.items() if k not in ACTIVITY_METRICS or k in wanted} for r in rows
        ]
    return {"activities": rows, "more": more, "offset": end}


async def _getsummary(state: SandboxState, params: Params, _: str, userid: str) -> dict[str, Any]:
    rows, end, more = _series(state, params, state.user(userid).sleep_summaries, "date")
    wanted = _data_fields(params) or SLEEP_DEFAULT_FIELDS
    series = [
        {**night, "data": {k: v for k, v in night["data"].items() if k in wanted}} for night in rows
    ]
    return {"series": series, "more": more, "offset": end}


async def _getdevice(state: SandboxState, _: Params, __: str, userid: str) -> dict[str, Any]:
    return {"devices": state.user(userid).devices}


def _appli(params: Params, *, required: bool) -> int | None:
    appli = _int(params, "appli")
    if appli is None and required or appli is not None and appli not in APPLI_SCOPE:
        raise invalid_params("appli")
    return appli


async def _subscribe(
    state: SandboxState, params: Params, client_id: str, userid: str
) -> dict[str, Any]:
    appli = _appli(params, required=True)
    assert appli is not None
    callbackurl = params.get("callbackurl", "")
    await state.subscribe(client_id, userid, callbackurl, appli, params.get("comment", ""))
    return {}


async def _list(state: SandboxState, params: Params, client_id: str, userid: str) -> dict[str, Any]:
    subscriptions = state.subscriptions_of(client_id, userid, _appli(params, required=False))
    profiles = [
        {"appli": s.appli, "callbackurl": s.callbackurl, "expires": s.expires, "comment": s.comment}
        for s in subscriptions
    ]
    return {"profiles": profiles}


async def _revoke(
    state: SandboxState, params: Params, client_id: str, userid: str
) -> dict[str, Any]:
    appli = _appli(params, required=False)
    state.revoke(client_id, userid, params.get("callbackurl", ""), appli)
    return {}


# (path, action) → (scope needed, handler); the Bearer token names the user (§1.5).
DATA_ACTIONS: dict[str, dict[str, tuple[str | None, Handler]]] = {
    "/measure": {"getmeas": ("user.metrics", _getmeas)},
    "/v2/measure": {"getactivity": ("user.activity", _getactivity)},
    "/v2/sleep": {"getsummary": ("user.activity", _getsummary)},
    "/v2/user": {"getdevice": ("user.info", _getdevice)},
    "/notify": {"subscribe": (None, _subscribe), "list": (None, _list), "revoke": (None, _revoke)},
}


# -- endpoints -----------------------------------------------------------------------------


async def _params(request: Request) -> dict[str, str]:
    """Query string and form body merged; parsed by hand (no python-multipart needed)."""
    params = dict(request.query_params)
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        params.update(parse_qsl(body, keep_blank_values=True))
    return params


def _mount_relative_path(request: Request) -> str:
    """The path below where the simulator is mounted: "/measure" both when it is served at its
    own root and mounted at /sandbox/withings (Starlette keeps the full path and puts the mount
    point in root_path)."""
    path: str = request.scope["path"]
    root_path: str = request.scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        return path[len(root_path) :]
    return path


def _not_implemented() -> Response:
    # The real API's answer to other methods/actions is unknown; 2554 is "not implemented".
    return envelope(2554, {}, "Not implemented")


def _fault_response(state: SandboxState, action: str) -> Response | None:
    fault = state.take_fault(action)
    if fault is None:
        return None
    texts = {401: "Invalid token", 503: "Invalid Params", 522: "Timeout", 601: "Too many request"}
    body = {} if fault.wait_seconds is None else {"wait_seconds": fault.wait_seconds}
    return envelope(fault.status, body, texts.get(fault.status, "An error occurred"))


def _api_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def api(request: Request) -> Response:
        if request.method != "POST":
            return _not_implemented()
        params = await _params(request)
        action = params.get("action", "")
        state.calls[action] += 1
        path = _mount_relative_path(request)
        if path == "/v2/oauth2":
            if action != "requesttoken":
                return _not_implemented()
            if (fault := _fault_response(state, action)) is not None:
                return fault
            try:
                return envelope(0, state.request_token(params))
            except SandboxError as error:
                return envelope(error.status, error.body, error.error)
        scope_and_handler = DATA_ACTIONS.get(path, {}).get(action)
        if scope_and_handler is None:
            return _not_implemented()
        if (fault := _fault_response(state, action)) is not None:
            return fault
        scope, handler = scope_and_handler
        authorization = request.headers.get("authorization", "")
        # withings-sync still sends access_token as a form field (§1.5); the API accepts both.
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        try:
            if scope is None and action == "subscribe":
                scope = APPLI_SCOPE.get(_int(params, "appli") or 0)
            client_id, userid = state.authenticate(token or params.get("access_token", ""), scope)
            return envelope(0, await handler(state, params, client_id, userid))
        except SandboxError as error:
            return envelope(error.status, error.body, error.error)

    return api


# -- the consent page ---------------------------------------------------------------------------

# The form posts to "authorize2", relative to the page's own URL, so the consent works both at
# the simulator's root and mounted under the gateway (/sandbox/withings/oauth2_user/authorize2).
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Withings sandbox: authorize</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.3rem 0}}button{{margin:.8rem .5rem 0 0;padding:.4rem 1rem}}</style>
</head><body><h1>Withings sandbox</h1>
<p><strong>{client}</strong> asks for <code>{scope}</code>.</p>
<form method="post" action="authorize2">{hidden}
<fieldset><legend>Sign in as</legend>{users}
<label><input type="radio" name="userid" value="new"{new_checked}> create a demo user</label>
</fieldset>
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form></body></html>"""

_AUTHORIZE_FIELDS = ("response_type", "client_id", "redirect_uri", "scope", "state", "mode")


def _consent_page(params: Params, users: list[SandboxUser]) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(params.get(name, ""))}">'
        for name in _AUTHORIZE_FIELDS
    )
    choices = "".join(
        f'<label><input type="radio" name="userid" value="{html.escape(u.userid)}"'
        f"{' checked' if i == 0 else ''}> user {html.escape(u.userid)}</label>"
        for i, u in enumerate(users)
    )
    return _PAGE.format(
        client=html.escape(params.get("client_id", "")),
        scope=html.escape(params.get("scope", "")),
        hidden=hidden,
        users=choices,
        new_checked="" if users else " checked",
    )


def _with_query(url: str, **query: str) -> str:
    parts = urlsplit(url)
    extra = urlencode(query)
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def _authorize_endpoint(state: SandboxState) -> Callable[[Request], Awaitable[Response]]:
    async def authorize(request: Request) -> Response:
        params = await _params(request)
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        scope = params.get("scope", "")
        try:
            if params.get("response_type") != "code":
                raise ValueError("response_type must be 'code'")
            if not params.get("state"):
                raise ValueError("state is required")
            state.check_authorize(client_id, redirect_uri, scope)
        except ValueError as problem:
            # Never redirect to an unvalidated redirect_uri: show the problem instead.
            return HTMLResponse(f"<p>Invalid request: {html.escape(str(problem))}</p>", 400)
        if request.method == "GET":
            return HTMLResponse(_consent_page(params, list(state.users.values())))
        if params.get("decision") == "deny":  # RFC 6749 §4.1.2.1
            target = _with_query(redirect_uri, error="access_denied", state=params["state"])
            return RedirectResponse(target, status_code=302)
        chosen = params.get("userid", "new")
        if chosen != "new" and chosen not in state.users:
            return HTMLResponse("<p>Invalid request: unknown user</p>", 400)
        userid = None if chosen == "new" else chosen
        code = state.authorize(client_id, redirect_uri, scope, userid)
        target = _with_query(redirect_uri, code=code, state=params["state"])
        return RedirectResponse(target, status_code=302)

    return authorize


def create_sandbox(state: SandboxState | None = None) -> Starlette:
    """The simulator app; pass a `SandboxState` to drive its clock, data and faults from tests."""
    state = state or SandboxState()
    api = _api_endpoint(state)
    every_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/oauth2_user/authorize2", _authorize_endpoint(state), methods=["GET", "POST"]),
        *(Route(path, api, methods=every_method) for path in ["/v2/oauth2", *DATA_ACTIONS]),
    ]
    app = Starlette(routes=routes)
    app.state.sandbox = state
    return app
