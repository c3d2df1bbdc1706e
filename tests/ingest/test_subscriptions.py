"""Notification subscriptions: the applis the scope allows, spaced out, repaired when dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.ingest.subscriptions import Subscriptions, subscribed_applis
from tests.ingest.harness import Harness, running_gateway, unseeded_user

CALLBACK = "https://gateway.example/webhooks/withings/s3cr3t"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path) as harness:
        yield harness


async def _answer_probe(request: Request) -> Response:
    return Response(status_code=200)


@pytest.mark.parametrize(
    ("scope", "applis"),
    [
        ("user.info,user.metrics,user.activity", [1, 2, 4, 16, 44, 46, 54]),
        ("user.metrics", [1, 2, 4, 54]),
        ("user.info,user.activity", [16, 44, 46]),
        ("user.info", [46]),  # unlink notifications only
        ("user.activity", [16, 44]),
    ],
)
def test_the_granted_scope_decides_the_applis(scope: str, applis: list[int]) -> None:
    assert subscribed_applis(scope) == applis


async def test_subscribe_spaced_out_then_repair_what_withings_dropped(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    probe_target = Starlette(
        routes=[Route("/webhooks/withings/s3cr3t", _answer_probe, methods=["HEAD"])]
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=probe_target)) as probe:
        gateway.sandbox.probe_client = probe
        pauses: list[float] = []

        async def record_pause(seconds: float) -> None:
            pauses.append(seconds)

        async def callback_url() -> str | None:
            return CALLBACK

        services = gateway.services
        subscriptions = Subscriptions(
            services.withings, services.tokens, services.vault, callback_url, sleep=record_pause
        )
        assert await subscriptions.subscribe(userid, "user.info,user.metrics,user.activity") == [
            1, 2, 4, 16, 44, 46, 54
        ]  # fmt: skip
        assert pauses == [5.0] * 6  # between calls, not before the first
        ours = {s.appli for s in gateway.sandbox.subscriptions if s.callbackurl == CALLBACK}
        assert ours == {1, 2, 4, 16, 44, 46, 54}

        gateway.sandbox.subscriptions = [
            s for s in gateway.sandbox.subscriptions if (s.appli, s.callbackurl) != (4, CALLBACK)
        ]
        assert await subscriptions.repair(userid) == [4]
        assert await subscriptions.repair(userid) == []


async def test_a_failed_probe_skips_that_appli_and_keeps_going(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    nothing_there = Starlette()  # every HEAD probe is a 404, so Withings answers status 293

    async def callback_url() -> str | None:
        return CALLBACK

    services = gateway.services
    probe = httpx.AsyncClient(transport=httpx.ASGITransport(app=nothing_there))
    gateway.sandbox.probe_client = probe
    subscriptions = Subscriptions(
        services.withings, services.tokens, services.vault, callback_url, spacing=0
    )
    before = gateway.sandbox.calls["subscribe"]
    async with probe:
        assert await subscriptions.subscribe(userid, "user.metrics") == []
    assert gateway.sandbox.calls["subscribe"] - before == 4
