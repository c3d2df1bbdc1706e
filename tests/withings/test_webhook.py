from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from fhir_gateway.app import on_http_exception
from fhir_gateway.config import Settings
from fhir_gateway.errors import InvalidRequest
from fhir_gateway.jobs.inbox import INBOX_KIND, Notification, NotificationIntake
from fhir_gateway.jobs.tasks import sweep_inbox_job
from fhir_gateway.jobs.worker import InProcessRunner, RedisJobClient
from fhir_gateway.metrics import GatewayMetrics, metrics_route
from fhir_gateway.store.sqlite import SQLiteStore
from fhir_gateway.withings.webhook import (
    SECRETS_KIND,
    WEBHOOK_SECRET_KEY,
    WebhookSecret,
    load_or_create_webhook_secret,
    parse_notification,
    webhook_callback_url,
    webhook_routes,
)
from tests.jobs.conftest import RestartableRedis
from tests.jobs.recording_sync import RecordingSync
from tests.jobs.workers import FAST
from tests.redis_server import RedisServer, run_redis_server

KNOWN_USER = "12345"
FORM = {"content-type": "application/x-www-form-urlencoded"}
VALID = f"userid={KNOWN_USER}&appli=1&startdate=1530576000&enddate=1530698753"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    sqlite_store = SQLiteStore(tmp_path / "gateway.sqlite3")
    await sqlite_store.open()
    await sqlite_store.put_record("withings_tokens", KNOWN_USER, {"ciphertext": "opaque"})
    yield sqlite_store
    await sqlite_store.close()


@dataclass
class Gateway:
    http: httpx.AsyncClient
    secret: str
    store: SQLiteStore
    metrics: GatewayMetrics

    async def post(
        self, body: str | bytes, *, secret: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.http.post(
            f"/webhooks/withings/{self.secret if secret is None else secret}",
            content=body,
            headers=FORM if headers is None else headers,
        )

    async def inbox(self) -> list[dict[str, object]]:
        return [record.data for record in await self.store.list_records(INBOX_KIND)]


def gateway_app(
    store: SQLiteStore, intake: NotificationIntake, metrics: GatewayMetrics
) -> Starlette:
    # The same 404 mapping as the real app, so "unknown path" means what it means in production.
    return Starlette(
        routes=[
            *webhook_routes(store, WebhookSecret(store), intake, metrics=metrics),
            metrics_route(metrics.registry),
        ],
        exception_handlers={HTTPException: on_http_exception},
    )


@pytest.fixture
async def in_process(
    store: SQLiteStore,
) -> AsyncIterator[tuple[Gateway, InProcessRunner, RecordingSync]]:
    sync = RecordingSync()
    runner = InProcessRunner(store, sync, tuning=FAST)
    app = gateway_app(store, runner.intake(), runner.metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield (
            Gateway(http, await load_or_create_webhook_secret(store), store, runner.metrics),
            runner,
            sync,
        )
    await runner.stop()


# ------------------------------------------------------------------------- the secret


async def test_secret_is_created_once_and_shared(store: SQLiteStore) -> None:
    values = await asyncio.gather(*(load_or_create_webhook_secret(store) for _ in range(10)))
    assert len(set(values)) == 1
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", values[0])  # ≥ 256 bits, URL-safe
    record = await store.get_record(SECRETS_KIND, WEBHOOK_SECRET_KEY)
    assert record is not None and record.version == 1
    assert "<hidden>" in repr(WebhookSecret(store))
    assert webhook_callback_url("https://gw.example/", values[0]) == (
        f"https://gw.example/webhooks/withings/{values[0]}"
    )


# ------------------------------------------------------------------------- probes and 404s


async def test_head_and_get_probe_answer_200_empty(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync],
) -> None:
    gateway, _, _ = in_process
    for method in ("HEAD", "GET"):
        response = await gateway.http.request(method, f"/webhooks/withings/{gateway.secret}")
        assert (response.status_code, response.content) == (200, b"")


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT"])
async def test_wrong_secret_is_the_same_404_as_an_unknown_path(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync], method: str
) -> None:
    gateway, _, _ = in_process
    unknown = await gateway.http.request(method, "/no/such/path", content=VALID, headers=FORM)
    for wrong in (gateway.secret[:-1] + "x", "x", gateway.secret + "x", "%C3%A9"):
        response = await gateway.http.request(
            method, f"/webhooks/withings/{wrong}", content=VALID, headers=FORM
        )
        assert response.status_code == unknown.status_code == 404
        assert response.content == unknown.content
        assert response.headers == unknown.headers
    if method != "HEAD":
        assert unknown.headers["content-type"] == "application/fhir+json; charset=utf-8"
        assert unknown.json()["issue"][0]["diagnostics"] == "no such endpoint"
    assert await gateway.inbox() == []


# ------------------------------------------------------------------------- malformed and forged


MALFORMED = [
    "",
    "appli=1&startdate=1&enddate=2",  # no userid
    "userid=12345",  # no appli
    "userid=12a45&appli=1&startdate=1&enddate=2",
    "userid=12345&appli=1.0&startdate=1&enddate=2",
    "userid=12345&appli=1&startdate=-1&enddate=2",
    "userid=12345&appli=1&startdate=20&enddate=10",  # start after end
    "userid=12345&appli=1&startdate=10",  # end missing
    "userid=12345&userid=999&appli=1&startdate=1&enddate=2",  # repeated
    "userid=12345&appli=1&date=2024-02-30",
    "userid=12345&appli=1&date=yesterday",
    "userid=12345&appli=1&startdate=1&enddate=2&deviceid=%3Cscript%3E",
    f"userid={'9' * 21}&appli=1&startdate=1&enddate=2",
    "userid=12345&appli=1&startdate=1&enddate=2&" + "x=1&" * 40,  # too many fields
    "userid=12345&appli=1&startdate=1&enddate=2&pad=" + "a" * 3000,  # too large
    "userid=12345&appli=1&startdate=99999999999999999999&enddate=99999999999999999999",
    "%ff%fe=1",
    "userid=12345&&appli=1",
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_malformed_notifications_get_400_and_no_side_effect(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync], body: str
) -> None:
    gateway, runner, sync = in_process
    response = await gateway.post(body)
    assert response.status_code in (400, 415)
    assert response.json()["resourceType"] == "OperationOutcome"
    await runner.queue.join()
    assert await gateway.inbox() == []
    assert runner.queue.active_ids() == set() and sync.runs == []
    assert (
        gateway.metrics.value("fhir_gateway_withings_notifications_total", {"outcome": "malformed"})
        == 1
    )


async def test_non_form_and_non_ascii_bodies_are_refused(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync],
) -> None:
    gateway, runner, _ = in_process
    assert (
        await gateway.post(VALID, headers={"content-type": "application/json"})
    ).status_code == 415
    assert (await gateway.post("userid=1é&appli=1".encode())).status_code == 400
    assert await gateway.inbox() == []


@pytest.mark.parametrize(
    "body",
    [
        "userid=999&appli=1&startdate=1&enddate=2",  # nobody we know
        "userid=999&appli=46&action=unlink",
        f"userid={KNOWN_USER}&appli=50&deviceid=abc&date=1700000000",  # a category we ignore
        # The profile category reaches the intake, which has nothing to fetch for it.
        f"userid={KNOWN_USER}&appli=46&action=update",
    ],
)
async def test_unknown_users_and_unsynced_categories_are_acknowledged_and_ignored(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync], body: str
) -> None:
    gateway, runner, sync = in_process
    response = await gateway.post(body)
    assert (response.status_code, response.content) == (200, b"")
    await runner.queue.join()
    assert await gateway.inbox() == [] and sync.runs == []


async def test_the_profile_category_reaches_the_handler_with_its_action(
    store: SQLiteStore,
) -> None:
    # Appli 46 carries no data, but action=unlink/delete means the account is gone at
    # Withings (withings-api §5.3): the handler (Services.on_notification) must see it.
    handed: list[Notification] = []

    async def on_notification(notification: Notification) -> str:
        handed.append(notification)
        return "unlinked"

    metrics = GatewayMetrics()
    app = Starlette(
        routes=[*webhook_routes(store, WebhookSecret(store), on_notification, metrics=metrics)]
    )
    secret = await load_or_create_webhook_secret(store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        gateway = Gateway(http, secret, store, metrics)
        for body in (
            f"userid={KNOWN_USER}&appli=46&action=unlink",
            f"userid={KNOWN_USER}&appli=46&action=delete&date=2024-05-02",
            "userid=999&appli=46&action=unlink",  # not ours: never handed over
            f"userid={KNOWN_USER}&appli=50&action=unlink",  # bed event: ignored
        ):
            assert (await gateway.post(body)).status_code == 200
    assert [(n.userid, n.appli, n.action) for n in handed] == [
        (KNOWN_USER, 46, "unlink"),
        (KNOWN_USER, 46, "delete"),
    ]
    assert metrics.value("fhir_gateway_withings_notifications_total", {"outcome": "unlinked"}) == 2
    assert await gateway.inbox() == []


# ------------------------------------------------------------------------- accepted


async def test_known_user_goes_to_the_inbox_then_a_sync_that_clears_it(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync],
) -> None:
    gateway, runner, sync = in_process
    sync.delay = 0.2
    response = await gateway.post(VALID + "&foo=bar")  # Withings passes our own params through
    assert (response.status_code, response.content) == (200, b"")
    [record] = await gateway.inbox()
    assert record["status"] == "enqueued"
    assert (record["userid"], record["appli"], record["startdate"]) == (KNOWN_USER, 1, 1530576000)
    await runner.queue.join()
    assert [run.windows for run in sync.runs] == [
        ((Notification(KNOWN_USER, 1, 1530576000, 1530698753).window()),)
    ]
    assert await gateway.inbox() == []
    metrics = (await gateway.http.get("/metrics")).text
    assert 'fhir_gateway_withings_notifications_total{outcome="enqueued"} 1.0' in metrics
    assert 'fhir_gateway_jobs_total{job="sync_user_job",outcome="ok"} 1.0' in metrics


async def test_a_replayed_notification_is_one_inbox_record(
    in_process: tuple[Gateway, InProcessRunner, RecordingSync],
) -> None:
    gateway, runner, sync = in_process
    sync.delay = 0.2
    for _ in range(20):
        assert (await gateway.post(VALID)).status_code == 200
    assert len(await gateway.inbox()) == 1
    await runner.queue.join()
    assert len(sync.runs) <= 2


def test_date_notifications_become_a_window_around_that_day() -> None:
    notification = parse_notification(b"userid=1&appli=16&date=2024-05-02")
    window = notification.window()
    day = 1714608000  # 2024-05-02T00:00Z
    assert window.appli == 16
    assert window.startdate is not None and window.enddate is not None
    assert window.startdate <= day - 12 * 3600 and window.enddate >= day + 86400 + 12 * 3600
    assert parse_notification(b"userid=1&appli=16&date=1714650000").window() == window


# ------------------------------------------------------------------------- Redis down


async def test_redis_down_still_answers_200_and_the_sweeper_enqueues_later(
    store: SQLiteStore, tmp_path: Path
) -> None:
    redis = RestartableRedis(tmp_path)
    redis.start()
    client = RedisJobClient(Settings(redis_url=redis.url), store)
    app = gateway_app(store, client.intake(), client.metrics)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            gateway = Gateway(
                http, await load_or_create_webhook_secret(store), store, client.metrics
            )
            # Connections are open and pooled when Redis goes away.
            assert await client.request_sync("777", None) is True
            redis.stop()
            response = await gateway.post(VALID)
            assert (response.status_code, response.content) == (200, b"")
            [record] = await gateway.inbox()
            assert record["status"] == "pending"
            assert (
                client.metrics.value(
                    "fhir_gateway_withings_notifications_total", {"outcome": "inbox_only"}
                )
                == 1
            )

            redis.start()  # Redis is back (empty: the outage lost nothing we depended on)
            ctx = {
                "store": store,
                "coalescer": client.coalescer,
                "queue": client.queue,
                "metrics": client.metrics,
                "tuning": FAST,
            }
            await sweep_inbox_job(ctx)
            [record] = await gateway.inbox()
            assert record["status"] == "enqueued"
            job_ids = [job_id.decode() for job_id in await client.redis.zrange("arq:queue", 0, -1)]
            # The restarted Redis is empty: only the swept notification's job is there.
            assert len(job_ids) == 1 and job_ids[0].startswith(f"sync:{KNOWN_USER}:")
            assert (await client.coalescer.state(KNOWN_USER)).phase == "queued"
    finally:
        await client.stop()
        redis.stop()


async def test_known_user_with_redis_enqueues_one_arq_job(
    store: SQLiteStore, redis_server: RedisServer
) -> None:
    client = RedisJobClient(Settings(redis_url=redis_server.url), store)
    app = gateway_app(store, client.intake(), client.metrics)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            gateway = Gateway(
                http, await load_or_create_webhook_secret(store), store, client.metrics
            )
            for _ in range(5):
                assert (await gateway.post(VALID)).status_code == 200
            for body in MALFORMED + ["userid=999&appli=1&startdate=1&enddate=2"]:
                await gateway.post(body)
            await gateway.post(VALID, secret="wrong")
            assert await client.redis.zcard("arq:queue") == 1
            [record] = await gateway.inbox()
            assert record["status"] == "enqueued"
    finally:
        await client.stop()


FIELD_NAMES = st.sampled_from(["userid", "appli", "startdate", "enddate", "date", "deviceid", "x"])
FIELD_VALUES = st.one_of(
    st.integers(-5, 2**40).map(str), st.text(max_size=12), st.just("2024-05-02")
)


@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8).map(
            lambda pairs: "&".join(f"{name}={value}" for name, value in pairs).encode(
                "utf-8", "surrogatepass"
            )
        ),
    )
)
def test_parser_accepts_only_well_typed_notifications(body: bytes) -> None:
    try:
        notification = parse_notification(body)
    except InvalidRequest:
        return
    assert notification.userid.isdigit()
    assert notification.appli >= 0
    if notification.startdate is not None:
        assert notification.enddate is not None and notification.startdate <= notification.enddate
    window = notification.window()
    assert window.appli == notification.appli
