"""`fhir-gateway serve --sandbox` (README command 1): the whole flow inside one app, as a browser
sees it: open /auth/withings, approve on the mounted simulator, data appears, query /Observation.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.services import ServiceOverrides, Services, sandbox_hint

BASE_URL = "http://127.0.0.1:8000"


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
            # Submit the consent form the way a browser does: its action, its hidden fields.
            action = re.search(r'<form method="post" action="([^"]+)"', consent.text)
            assert action is not None
            fields = dict(
                re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', consent.text)
            )
            approved = await browser.post(
                action.group(1), data={**fields, "userid": "new", "decision": "allow"}
            )
            assert approved.status_code == 302, approved.text

            connected = await browser.get(_path(approved.headers["location"]))
            assert connected.status_code == 200 and "Withings connected" in connected.text
            services: Services = app.state.services.services
            await services.settle()
            # The simulator probed the gateway's webhook in-process and accepted it.
            assert services.sandbox is not None
            assert {s.appli for s in services.sandbox.subscriptions} == {1, 2, 4, 16, 44, 54}

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
