"""/health (liveness), /health/ready (readiness with the pipeline's state) and /metrics (admin)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.errors import WithingsTransient
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.jobs.inbox import Notification, record_notification
from fhir_gateway.jobs.queue import record_dead_letter
from fhir_gateway.services import Services
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.withings.keys import generate_key
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.webhook import load_or_create_webhook_secret
from tests.jobs.conftest import RestartableRedis

SECRET_TOKEN_VALUES = ("access-token-value-1234", "refresh-token-value-5678")


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def gateway(
    tmp_path: Path, *, redis_url: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, SQLiteStore, Services]]:
    settings = Settings(
        data_dir=tmp_path, encryption_key=generate_key(), redis_url=redis_url, base_url="http://t"
    )
    store = SQLiteStore(tmp_path / "gateway.sqlite3")
    await store.open()
    app = create_app(settings, store=store)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                yield http, store, app.state.services.services
    finally:
        await store.close()


async def test_liveness_is_a_cheap_200(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, store, _):
        await store.close()  # even with the store gone: liveness does no I/O
        response = await http.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_ready_reports_every_check_on_an_idle_gateway(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, _, _):
        response = await http.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "store": {"status": "ok"},  # no "redis": none is configured
            "withings_reauth": {"status": "ok", "count": 0, "userids": []},
            "inbox_backlog": {"status": "ok", "pending": 0},
            "dead_letters": {"status": "ok", "count": 0},
        },
    }


async def test_reauth_users_backlog_and_dead_letters_are_reported_not_fatal(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as (http, store, services):
        for userid in ("111", "222"):
            tokens = TokenSet(userid, *SECRET_TOKEN_VALUES, expires_at=2e9, scope="user.metrics")
            await services.tokens.store_initial(tokens)
        await services.vault.mark_needs_reauth("222", "invalid_grant")
        error = WithingsTransient("Withings getmeas failed with status 522")
        await record_dead_letter(store, job="sync_user_job", userid="111", error=error, tries=5)
        await record_notification(store, Notification("111", 1, 1_700_000_000, 1_700_000_060))
        response = await http.get("/health/ready")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["withings_reauth"] == {"status": "attention", "count": 1, "userids": ["222"]}
    assert checks["inbox_backlog"] == {"status": "ok", "pending": 1}
    assert checks["dead_letters"] == {"status": "attention", "count": 1}
    assert not any(secret in response.text for secret in SECRET_TOKEN_VALUES)


async def test_a_store_that_is_down_makes_the_gateway_unready(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, store, _):
        await store.close()
        response = await http.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["store"] == {"status": "unavailable"}
    assert body["checks"]["dead_letters"] == {"status": "unknown"}


async def test_redis_is_checked_when_configured_and_its_outage_is_fatal(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    async with gateway(tmp_path, redis_url=restartable_redis.url) as (http, _, _):
        up = await http.get("/health/ready")
        restartable_redis.stop()
        down = await http.get("/health/ready")
        restartable_redis.start()
        back = await http.get("/health/ready")
    assert up.status_code == 200 and up.json()["checks"]["redis"] == {"status": "ok"}
    assert down.status_code == 503 and down.json()["checks"]["redis"] == {"status": "unavailable"}
    assert down.json()["checks"]["store"] == {"status": "ok"}
    assert back.status_code == 200


@pytest.mark.parametrize(
    ("scope", "status", "issue_code"),
    [(None, 401, "login"), ("system/*.rs", 403, "forbidden")],
)
async def test_metrics_need_an_admin_token(
    tmp_path: Path, scope: str | None, status: int, issue_code: str
) -> None:
    async with gateway(tmp_path) as (http, store, _):
        headers = {}
        if scope is not None:
            headers["Authorization"] = f"Bearer {await create_access_token(store, scope=scope)}"
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == status
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == issue_code


async def test_metrics_count_what_the_webhook_received(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (http, store, _):
        admin = await create_access_token(store, scope="system/*.rs admin")
        secret = await load_or_create_webhook_secret(store)
        form = {"content-type": "application/x-www-form-urlencoded"}
        await http.post(f"/webhooks/withings/{secret}", content="userid=9&appli=1", headers=form)
        await http.post(f"/webhooks/withings/{secret}", content="userid=x", headers=form)
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'fhir_gateway_withings_notifications_total{outcome="unknown_user"} 1.0' in lines
    assert 'fhir_gateway_withings_notifications_total{outcome="malformed"} 1.0' in lines
