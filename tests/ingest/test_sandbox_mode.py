"""`fhir-gateway serve --sandbox` (README command 1): the whole flow inside one app, as a browser
sees it: open /auth/withings, approve on the mounted simulator, data appears, query /Observation.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.services import ServiceOverrides, Services, sandbox_hint
from tests.redis_server import free_port

BASE_URL = "http://127.0.0.1:8000"
CLI = Path(sys.executable).with_name("fhir-gateway")


def _path(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE_URL, url  # never leaves the gateway
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


async def test_a_newcomer_connects_the_sandbox_and_queries_observations(tmp_path: Path) -> None:
    settings = Settings(base_url=BASE_URL, data_dir=tmp_path, sandbox=True)
    # Subscriptions are spaced 5 s apart in production; the test does not wait for that.
    app = create_app(settings, overrides=ServiceOverrides(subscribe_spacing=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as browser:
            start = await browser.get("/auth/withings")
            assert start.status_code == 302
            authorize = start.headers["location"]
            assert authorize.startswith(f"{BASE_URL}/sandbox/withings/oauth2_user/authorize2?")

            consent = await browser.get(_path(authorize))
            assert consent.status_code == 200 and "Allow" in consent.text
            # Submit the consent form the way a browser does: its action resolved against the
            # page's URL, its hidden fields.
            action = re.search(r'<form method="post" action="([^"]+)"', consent.text)
            assert action is not None
            target = urljoin(str(consent.url), action.group(1))
            assert _path(target).startswith("/sandbox/withings/oauth2_user/authorize2")
            fields = dict(
                re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', consent.text)
            )
            approved = await browser.post(
                _path(target), data={**fields, "userid": "new", "decision": "allow"}
            )
            assert approved.status_code == 302, approved.text

            connected = await browser.get(_path(approved.headers["location"]))
            assert connected.status_code == 200 and "Withings connected" in connected.text
            services: Services = app.state.services.services
            await services.settle()
            # The simulator probed the gateway's webhook in-process and accepted it.
            assert services.sandbox is not None
            assert {s.appli for s in services.sandbox.subscriptions} == {1, 2, 4, 16, 44, 46, 54}

            token = await create_access_token(services.store, scope="system/*.rs")
            found = await browser.get(
                "/Observation",
                params={"_summary": "count"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert found.status_code == 200 and found.json()["total"] > 1000


def test_the_start_up_hint_names_the_connect_url_and_a_query() -> None:
    hint = "\n".join(sandbox_hint(Settings(base_url=BASE_URL, sandbox=True)))
    assert f"{BASE_URL}/auth/withings" in hint and f"{BASE_URL}/Observation" in hint


@contextmanager
def serving_sandbox(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """`fhir-gateway serve --sandbox` (what `make run` runs) as a real process on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "BASE_URL", "MONGODB_URL"}}
    env["DATA_DIR"] = str(data_dir)
    log = data_dir / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(CLI), "serve", "--sandbox", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _wait_until_up(http: httpx.AsyncClient, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


async def test_make_run_serves_the_whole_flow_over_real_http(tmp_path: Path) -> None:
    with serving_sandbox(tmp_path) as (base_url, log):
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as browser:
            await _wait_until_up(browser, log)
            # The token the first start printed for the newcomer.
            token = re.search(r"fgw_[A-Za-z0-9_-]+", log.read_text())
            assert token is not None
            admin = {"Authorization": f"Bearer {token.group(0)}"}

            start = await browser.get("/auth/withings")
            assert start.status_code == 302
            consent = await browser.get(start.headers["location"])
            assert consent.status_code == 200
            action = re.search(r'<form method="post" action="([^"]+)"', consent.text)
            assert action is not None
            target = urljoin(str(consent.url), action.group(1))
            assert target == f"{base_url}/sandbox/withings/oauth2_user/authorize2"
            fields = dict(
                re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', consent.text)
            )
            approved = await browser.post(
                target, data={**fields, "userid": "new", "decision": "allow"}
            )
            assert approved.status_code == 302, approved.text
            connected = await browser.get(approved.headers["location"])
            assert connected.status_code == 200 and "Withings connected" in connected.text

            total = 0
            deadline = time.monotonic() + 60
            while total <= 1000 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                found = await browser.get(
                    "/Observation", params={"_summary": "count"}, headers=admin
                )
                assert found.status_code == 200, found.text
                total = found.json()["total"]
            assert total > 1000, log.read_text()[-3000:]

            metrics = await browser.get("/metrics", headers=admin)
            assert 'fhir_gateway_withings_calls_total{action="getmeas",status="0"}' in metrics.text
            ready = await browser.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "ok"
