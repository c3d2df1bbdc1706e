"""The real gateway app wired to the Withings sandbox over httpx transports, with one fake clock.

Nothing of ours is mocked: the app, its services, the SQLite store, the Withings client and the
simulator all run for real; the only seams used are the transports and the clock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.applications import Starlette

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.services import ServiceOverrides, Services
from fhir_gateway.store.base import Store
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings.client import RetryPolicy, WithingsClient
from fhir_gateway.withings.keys import generate_key
from fhir_gateway.withings.sandbox import SandboxState, create_sandbox

GATEWAY = "http://gateway.test"
WITHINGS = "http://withings.test"
CLIENT_ID = "gateway-client"
CLIENT_SECRET = "gateway-client-secret"


class FakeClock:
    """Shared by the sandbox and the gateway, so token expiry agrees on both sides."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TokenRecorder(httpx.AsyncBaseTransport):
    """Wraps the sandbox transport: remembers every token value Withings hands out, and drops
    the connection for requests `fail_when` picks (the network failing, not Withings)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.tokens: set[str] = set()
        self.fail_when: Callable[[httpx.Request], bool] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.fail_when is not None and self.fail_when(request):
            raise httpx.ConnectError("connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/v2/oauth2":
            raw = await response.aread()
            body = json.loads(raw).get("body") or {}
            self.tokens |= {str(body[k]) for k in ("access_token", "refresh_token") if k in body}
            return httpx.Response(response.status_code, headers=response.headers, content=raw)
        return response


async def _no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


@dataclass
class Harness:
    settings: Settings
    clock: FakeClock
    sandbox: SandboxState
    sandbox_http: httpx.AsyncClient  # the browser's view of Withings
    app: Starlette
    http: httpx.AsyncClient  # the browser's / API client's view of the gateway
    store: Store
    recorder: TokenRecorder
    admin_token: str
    codes: list[str] = field(default_factory=list)

    @property
    def services(self) -> Services:
        return self.app.state.services.services  # type: ignore[no-any-return]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def authorize(self, userid: str = "new", decision: str = "allow") -> httpx.Response:
        """/auth/withings → the sandbox consent page → its redirect back; the callback URL."""
        start = await self.http.get("/auth/withings")
        assert start.status_code == 302, start.text
        location = start.headers["location"]
        consent = await self.sandbox_http.get(location)
        assert consent.status_code == 200, consent.text
        params = dict(parse_qsl(urlsplit(location).query))
        approved = await self.sandbox_http.post(
            "/oauth2_user/authorize2", data={**params, "userid": userid, "decision": decision}
        )
        assert approved.status_code == 302, approved.text
        back = approved.headers["location"]
        self.codes += [v for k, v in parse_qsl(urlsplit(back).query) if k == "code"]
        return approved

    async def connect(self, userid: str = "new") -> str:
        """The whole consent flow, then wait for the queued backfill; the Withings userid."""
        approved = await self.authorize(userid)
        page = await self.http.get(approved.headers["location"])
        assert page.status_code == 200, page.text
        await self.services.settle()
        known = set(self.sandbox.users) if userid == "new" else {userid}
        connected = [u.userid for u in await self.services.vault.list_users()]
        return next(u for u in reversed(connected) if u in known)

    async def fhir(self, url: str, **params: str) -> dict[str, Any]:
        response = await self.http.get(url, params=params, headers=self.admin())
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def total(self, **params: str) -> int:
        bundle = await self.fhir("/Observation", _summary="count", **params)
        return int(bundle["total"])


def unseeded_user(sandbox: SandboxState, groups: list[dict[str, Any]]) -> str:
    """A sandbox user holding exactly `groups` (and no activity or sleep)."""
    userid = sandbox.add_user(seed=False)
    for group in groups:
        sandbox.add_measure_group(userid, group)
    return userid


def weight_group(weight_grams: int, taken: int, grpid: int | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {
        "date": taken,
        "created": taken,
        "modified": taken,
        "attrib": 0,
        "measures": [{"value": weight_grams, "type": 1, "unit": -3}],
    }
    if grpid is not None:
        group["grpid"] = grpid
    return group


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, *, measure_page_size: int = 200
) -> AsyncIterator[Harness]:
    clock = FakeClock()
    async with AsyncExitStack() as stack:
        state = SandboxState(clock=clock, measure_page_size=measure_page_size)
        state.register_client(CLIENT_ID, CLIENT_SECRET, [f"{GATEWAY}/auth/withings/callback"])
        sandbox_app = create_sandbox(state)
        settings = Settings(
            base_url=GATEWAY,
            data_dir=tmp_path,
            withings_client_id=CLIENT_ID,
            withings_client_secret=CLIENT_SECRET,
            withings_api_url=WITHINGS,
            withings_authorize_url=f"{WITHINGS}/oauth2_user/authorize2",
            encryption_key=generate_key(),
        )
        recorder = TokenRecorder(httpx.ASGITransport(app=sandbox_app))
        withings_http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=WITHINGS, transport=recorder)
        )
        withings = WithingsClient(
            withings_http,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            clock=clock,
            sleep=_no_wait,
            retry=RetryPolicy(base_delay=0.0),
        )
        store = make_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        overrides = ServiceOverrides(withings=withings, clock=clock, subscribe_spacing=0.0)
        app = create_app(settings, store=store, overrides=overrides)
        await stack.enter_async_context(app.router.lifespan_context(app))
        gateway_transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=GATEWAY, transport=gateway_transport)
        )
        sandbox_http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=WITHINGS, transport=httpx.ASGITransport(app=sandbox_app))
        )
        # Withings HEAD-probes the callback on subscribe: let it reach the gateway in-process.
        state.probe_client = http
        admin_token = await create_access_token(store, scope="system/*.rs admin")
        yield Harness(
            settings=settings,
            clock=clock,
            sandbox=state,
            sandbox_http=sandbox_http,
            app=app,
            http=http,
            store=store,
            recorder=recorder,
            admin_token=admin_token,
        )
