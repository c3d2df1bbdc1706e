"""GET /auth/withings and its callback: the redirect, and every refusal as a 400 HTML page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.withings.sandbox_state import CODE_SECONDS
from tests.ingest.harness import CLIENT_ID, GATEWAY, Harness, running_gateway, unseeded_user


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path) as harness:
        yield harness


def assert_error_page(response: httpx.Response, status: int, phrase: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert phrase in response.text
    assert "Traceback" not in response.text


async def test_authorize_redirects_with_the_spec_parameters(gateway: Harness) -> None:
    response = await gateway.http.get("/auth/withings")
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == (
        gateway.settings.withings_authorize_url
    )
    query = {name: values[0] for name, values in parse_qs(target.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == f"{GATEWAY}/auth/withings/callback"
    assert query["scope"] == "user.info,user.metrics,user.activity"
    assert len(query["state"]) > 40  # signed: nonce, expiry and a MAC


async def test_a_state_is_single_use(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    approved = await gateway.authorize(userid)
    callback = approved.headers["location"]
    assert (await gateway.http.get(callback)).status_code == 200
    assert_error_page(await gateway.http.get(callback), 400, "already used")


async def test_a_forged_or_missing_state_is_refused(gateway: Harness) -> None:
    forged = await gateway.http.get("/auth/withings/callback?code=abc&state=e30.bm9wZQ")
    assert_error_page(forged, 400, "signature is invalid")
    missing = await gateway.http.get("/auth/withings/callback?code=abc")
    assert_error_page(missing, 400, "no state")


async def test_denied_consent_is_a_clear_page(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    denied = await gateway.authorize(userid, decision="deny")
    page = await gateway.http.get(denied.headers["location"])
    assert_error_page(page, 400, "did not grant access")
    assert await gateway.services.vault.list_users() == []


async def test_a_code_used_too_late_is_refused_by_withings(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    approved = await gateway.authorize(userid)
    gateway.clock.advance(CODE_SECONDS + 1)  # the code lives 30 s (withings-api.md §1.2)
    page = await gateway.http.get(approved.headers["location"])
    assert_error_page(page, 400, "invalid code")
    assert gateway.codes[-1] not in page.text


async def test_without_withings_credentials_the_page_says_so(tmp_path: Path) -> None:
    app = create_app(Settings(base_url=GATEWAY, data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=GATEWAY) as client:
            page = await client.get("/auth/withings")
    assert_error_page(page, 503, "WITHINGS_CLIENT_ID")


async def test_the_sync_workflow_needs_an_admin_token(gateway: Harness) -> None:
    reader = await create_access_token(gateway.store, scope="system/*.rs")
    refused = await gateway.http.post(
        "/workflows/withings/sync", headers={"Authorization": f"Bearer {reader}"}
    )
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    anonymous = await gateway.http.post("/workflows/withings/sync")
    assert anonymous.status_code == 401
    unknown = await gateway.http.post(
        "/workflows/withings/sync", params={"userid": "404"}, headers=gateway.admin()
    )
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
