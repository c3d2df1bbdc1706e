"""The whole push pipeline, for real: webhook → inbox → queue → worker job → SyncService → store.

Only Withings is simulated (the sandbox). The store is the SQLite store on a file, Redis is a
real redis-server, the gateway is `create_app`, and the workers are arq `Worker`s built from our
`worker_settings` (as asyncio tasks here; `worker_process.py` runs one as an OS process).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import redis
import uvicorn
from arq.cron import CronJob, cron
from arq.worker import Worker
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.jobs.inbox import INBOX_KIND
from fhir_gateway.jobs.queue import list_dead_letters
from fhir_gateway.jobs.tasks import JobTuning, reconcile_job, sweep_inbox_job
from fhir_gateway.jobs.worker import WorkerServices, worker_settings
from fhir_gateway.services import ServiceOverrides, Services, open_services
from fhir_gateway.store.base import Cursor, Query, ReferenceClause, Store
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings import identity
from fhir_gateway.withings.keys import generate_key
from fhir_gateway.withings.sandbox import SandboxState, create_sandbox
from fhir_gateway.withings.sandbox_state import GRPID_STRIDE, SandboxUser
from tests.redis_server import free_port

GATEWAY = "http://gateway.test"
WITHINGS = "http://withings.test"
CLIENT_ID = "pipeline-client"
CLIENT_SECRET = "pipeline-client-secret"
REDIRECT_URI = f"{GATEWAY}/auth/withings/callback"
SCOPE = "user.info,user.metrics,user.activity"
FORM = {"content-type": "application/x-www-form-urlencoded"}
# The test drives Withings far faster than its real quota (120/min, withings-api §2.3); the
# budget itself is tested in tests/jobs/test_budget.py.
UNLIMITED_REQUESTS_PER_MINUTE = 10_000_000

# Short timeouts so that a killed worker's job and lease come back within seconds
# (reliability-anchors §4.4: "set small timeouts in tests"). arq keeps a job's in-progress key
# for job_timeout + 10 s; the coalescer lease is 3 × lease_refresh.
FAST = JobTuning(
    max_tries=20,
    job_timeout=4.0,
    retry_base_delay=0.1,
    retry_max_delay=0.5,
    lease_refresh=0.3,
    reconcile_interval=7200.0,
    inbox_stale_after=3.0,
)
SWEEP_EVERY_SECONDS = 1
YEAR_SECONDS = 365 * 86_400


# ---------------------------------------------------------------- Redis


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What Redis holds for the pipeline: user jobs queued (sync:…, reconcile:…; the periodic
    cron jobs left out), claims on jobs, per-user sync states and locks."""

    queued: int
    in_progress: list[str]
    sync_states: dict[str, dict[str, Any]]
    locks: list[str]

    @property
    def busy_users(self) -> list[str]:
        return [user for user, state in self.sync_states.items() if state["phase"] != "idle"]

    @property
    def idle(self) -> bool:
        return not (self.queued or self.in_progress or self.busy_users)


async def queue_snapshot(client: Redis) -> QueueSnapshot:
    states: dict[str, dict[str, Any]] = {}
    async for key in client.scan_iter("fhir-gateway:coalesce:*"):
        raw = await client.get(key)
        if raw is not None:
            states[key.decode().rsplit(":", 1)[1]] = json.loads(raw)
    queued = [job.decode() for job in await client.zrange("arq:queue", 0, -1)]
    return QueueSnapshot(
        queued=sum(1 for job in queued if not job.startswith("cron:")),
        in_progress=[
            key.decode()
            async for key in client.scan_iter("arq:in-progress:*")
            if not key.startswith(b"arq:in-progress:cron:")
        ],
        sync_states=states,
        locks=[key.decode() async for key in client.scan_iter("fhir-gateway:lock:*")],
    )


# ---------------------------------------------------------------- Withings traffic


@dataclass(frozen=True, slots=True)
class WithingsCall:
    action: str
    userid: str | None  # whose Bearer token (None: token endpoint, unknown token)
    params: dict[str, str]
    at: float


class WithingsTraffic(httpx.AsyncBaseTransport):
    """Wraps the transport to the sandbox: records every call with the user whose token made it.

    `on_call` hooks run after the sandbox answered and before the caller gets the answer, so a
    test can change Withings while a sync is between two of its calls.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.calls: list[WithingsCall] = []
        self.on_call: list[Callable[[WithingsCall], Awaitable[None]]] = []
        self._owners: dict[str, str] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        params = dict(parse_qsl((await request.aread()).decode()))
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip() or None
        response = await self.inner.handle_async_request(request)
        raw = await response.aread()
        if request.url.path == "/v2/oauth2":
            body = json.loads(raw).get("body") or {}
            if "access_token" in body:
                self._owners[str(body["access_token"])] = str(body["userid"])
        call = WithingsCall(
            action=params.get("action", ""),
            userid=None if token is None else self._owners.get(token),
            params=params,
            at=time.time(),
        )
        self.calls.append(call)
        for hook in list(self.on_call):
            await hook(call)
        return httpx.Response(response.status_code, headers=response.headers, content=raw)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def of(self, userid: str, action: str | None = None) -> list[WithingsCall]:
        return [
            c for c in self.calls if c.userid == userid and (action is None or c.action == action)
        ]

    def sync_runs(self, userid: str, since: float = 0.0) -> int:
        """How many syncs of the user started: every sync begins with the measures sweep, whose
        first page asks `lastupdate` without `offset` (ingest/sync.py, _Run.sweep)."""
        return sum(
            1
            for call in self.of(userid, "getmeas")
            if call.at >= since and "lastupdate" in call.params and "offset" not in call.params
        )


# ---------------------------------------------------------------- data and expectations


def measure_group(
    rng: random.Random, grpid: int, taken: int, kind: str | None = None
) -> tuple[dict[str, Any], int]:
    """A measure group as a device uploads it, and the notification appli announcing it."""
    kind = (
        kind
        or rng.choices(
            ["weight", "body", "bp", "temperature", "segments", "goal", "ambiguous"],
            weights=[40, 15, 20, 5, 8, 6, 6],
        )[0]
    )
    group: dict[str, Any] = {"grpid": grpid, "date": taken, "category": 1, "attrib": 0}
    weight = {"type": 1, "value": rng.randint(55_000, 110_000), "unit": -3}
    appli = 1
    if kind == "weight":
        group["measures"] = [weight]
    elif kind == "body":
        group["measures"] = [weight, {"type": 6, "value": rng.randint(100, 400), "unit": -1}]
    elif kind == "bp":
        appli = 4
        group["measures"] = [
            {"type": 9, "value": rng.randint(60, 95), "unit": 0},
            {"type": 10, "value": rng.randint(100, 160), "unit": 0},
            {"type": 11, "value": rng.randint(50, 100), "unit": 0},
        ]
    elif kind == "temperature":
        appli = 2
        group["measures"] = [{"type": 71, "value": rng.randint(360, 385), "unit": -1}]
    elif kind == "segments":
        group["measures"] = [
            weight,
            *({"type": 173, "value": rng.randint(2000, 9000), "unit": -3, "position": p}
              for p in (2, 3, 10, 11, 12)),
        ]  # fmt: skip
    elif kind == "goal":
        group["category"] = 2  # an objective the user set, not a measurement (§3.1)
        group["measures"] = [weight]
    else:
        group["attrib"] = 1  # the scale could not tell who stood on it (§3.4)
        group["measures"] = [weight]
    return group, appli


def user_grpid(sandbox: SandboxState, userid: str, index: int) -> int:
    """Globally unique like real grpids: the FHIR ids derive from the grpid alone."""
    return sandbox.user(userid).serial * GRPID_STRIDE + index


def expected_measure_keys(user: SandboxUser) -> set[str]:
    """What the store must hold for the user, from the sandbox's data and the mapping rules
    (withings-api §3.1, §3.4): real measurements only (no goals, no ambiguous attrib 1), one
    Observation per (grpid, meastype, position), except one panel per group and position for
    systolic/diastolic."""
    keys: set[str] = set()
    for grpid, group in user.measure_groups.items():
        if group["category"] != 1 or group["attrib"] == 1:
            continue
        for measure in group["measures"]:
            position = measure.get("position")
            if measure["type"] in (9, 10):
                keys.add(identity.blood_pressure_key(grpid, position))
            else:
                keys.add(identity.measure_key(grpid, measure["type"], position))
    return keys


async def stored_measure_keys(store: Store, userid: str) -> Counter[str]:
    """withings-measure identifier values of the user's current Observations, with repeats."""
    keys: Counter[str] = Counter()
    clauses = (ReferenceClause("patient", (identity.patient_id(userid),)),)
    after: Cursor | None = None
    while True:
        page = await store.search(Query("Observation", clauses=clauses, after=after, limit=500))
        for row in page.resources:
            resource = json.loads(row.json)
            keys.update(
                identifier["value"]
                for identifier in resource.get("identifier", [])
                if identifier.get("system") == identity.MEASURE_IDENTIFIER_SYSTEM
            )
        if not page.more or not page.resources:
            return keys
        after = Cursor(page.resources[-1].id, page.resources[-1].id)


async def missing_and_duplicated(
    store: Store, sandbox: SandboxState, userids: list[str]
) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
    """Per user: expected keys not stored, stored keys that are not expected or repeated; and
    how many keys were expected in all."""
    missing: dict[str, set[str]] = {}
    extra: dict[str, set[str]] = {}
    total = 0
    for userid in userids:
        expected = expected_measure_keys(sandbox.user(userid))
        total += len(expected)
        stored = await stored_measure_keys(store, userid)
        if expected - set(stored):
            missing[userid] = expected - set(stored)
        wrong = {key for key, count in stored.items() if count > 1 or key not in expected}
        if wrong:
            extra[userid] = wrong
    return missing, extra, total


def notification_form(userid: str, appli: int, startdate: int, enddate: int) -> str:
    return f"userid={userid}&appli={appli}&startdate={startdate}&enddate={enddate}"


# ---------------------------------------------------------------- the gateway


@dataclass
class Pipeline:
    settings: Settings
    sandbox: SandboxState
    traffic: WithingsTraffic
    app: Starlette
    http: httpx.AsyncClient
    store: Store
    secret: str
    userids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def services(self) -> Services:
        return self.app.state.services.services  # type: ignore[no-any-return]

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/withings/{self.secret}"

    async def post(self, body: str, *, path: str | None = None) -> httpx.Response:
        """Deliver one notification the way Withings does (a form POST)."""
        started = time.monotonic()
        response = await self.http.post(path or self.webhook_path, content=body, headers=FORM)
        self.latencies.append(time.monotonic() - started)
        return response

    async def connect(self, userid: str) -> None:
        """Consent without the browser: the sandbox issues a code, the gateway's Withings client
        trades it and the token manager stores the pair, as the OAuth callback does."""
        code = self.sandbox.authorize(CLIENT_ID, REDIRECT_URI, SCOPE, userid)
        tokens = await self.services.withings.exchange_code(code, REDIRECT_URI)
        await self.services.tokens.store_initial(tokens)
        self.userids.append(userid)

    def add_user(self, rng: random.Random, groups: int) -> tuple[str, list[tuple[int, int]]]:
        """A sandbox user holding `groups` generated groups; (grpid, appli) of each."""
        userid = self.sandbox.add_user(seed=False)
        announced: list[tuple[int, int]] = []
        for index in range(1, groups + 1):
            announced.append(self.land_group(rng, userid, index))
        return userid, announced

    def land_group(
        self, rng: random.Random, userid: str, index: int, kind: str | None = None
    ) -> tuple[int, int]:
        """New data at Withings (modified = now); (grpid, appli of its notification)."""
        taken = int(time.time()) - rng.randint(60, 30 * 86_400)
        group, appli = measure_group(rng, user_grpid(self.sandbox, userid, index), taken, kind)
        return self.sandbox.add_measure_group(userid, group), appli

    def notification_for(self, userid: str, grpid: int, appli: int) -> str:
        """The notification Withings sends for a group: a span around its date (§5.4)."""
        taken = int(self.sandbox.user(userid).measure_groups[grpid]["date"])
        return notification_form(userid, appli, taken - 1, taken + 1)

    async def inbox_size(self) -> int:
        return len(await self.store.list_records(INBOX_KIND, limit=100_000))

    async def verify(self) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
        return await missing_and_duplicated(self.store, self.sandbox, self.userids)


def pipeline_settings(tmp_path: Path, redis_url: str | None) -> Settings:
    return Settings(
        base_url=GATEWAY,
        data_dir=tmp_path,
        redis_url=redis_url,
        withings_client_id=CLIENT_ID,
        withings_client_secret=CLIENT_SECRET,
        withings_api_url=WITHINGS,
        withings_authorize_url=f"{WITHINGS}/oauth2_user/authorize2",
        encryption_key=generate_key(),
        withings_requests_per_minute=UNLIMITED_REQUESTS_PER_MINUTE,
        # The in-process reconciliation loop fires on multiples of this since the epoch: a year
        # keeps it out of scenarios that did not ask for it (as with_sweep_every does for arq).
        sync_interval_seconds=YEAR_SECONDS,
    )


@asynccontextmanager
async def running_pipeline(
    tmp_path: Path,
    redis_url: str | None,
    *,
    sandbox: SandboxState | None = None,
    withings: httpx.AsyncBaseTransport | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[Pipeline]:
    """The gateway app (lifespan running) over the sandbox; with `redis_url` its jobs go to
    Redis for workers, without it they run in-process (embedded mode)."""
    state = sandbox or SandboxState()
    state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])
    traffic = WithingsTraffic(withings or httpx.ASGITransport(app=create_sandbox(state)))
    settings = settings or pipeline_settings(tmp_path, redis_url)
    async with AsyncExitStack() as stack:
        store = make_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        app = create_app(
            settings,
            store=store,
            withings_transport=traffic,
            overrides=ServiceOverrides(subscribe_spacing=0.0),
        )
        await stack.enter_async_context(app.router.lifespan_context(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=GATEWAY, transport=httpx.ASGITransport(app=app), timeout=30)
        )
        # Withings HEAD-probes the callback URL when subscribing (§5.2): it reaches the app.
        state.probe_client = http
        pipeline = Pipeline(
            settings=settings,
            sandbox=state,
            traffic=traffic,
            app=app,
            http=http,
            store=store,
            secret="",
        )
        pipeline.secret = await pipeline.services.webhook_secret()
        yield pipeline


# ---------------------------------------------------------------- arq workers


def with_sweep_every(
    options: dict[str, Any], seconds: int, *, reconcile: bool = False
) -> dict[str, Any]:
    """Our worker settings with the inbox sweeper every `seconds` instead of every minute, so a
    test waits seconds, not a minute, for the sweeper after an outage; and without the
    reconciliation cron unless `reconcile`: it fires on even hours, and a scenario that happens
    to straddle one would count that reconciliation's syncs as its own. Everything else as is."""
    crons: list[CronJob] = []
    for job in options["cron_jobs"]:
        if job.coroutine is sweep_inbox_job:
            job = cron(
                sweep_inbox_job,
                second=set(range(0, 60, seconds)),
                unique=True,
                timeout=job.timeout_s,
            )
        elif job.coroutine is reconcile_job and not reconcile:
            continue
        crons.append(job)
    return {**options, "cron_jobs": crons}


def worker_services(
    withings: httpx.AsyncBaseTransport,
) -> Callable[[Settings], AbstractAsyncContextManager[WorkerServices]]:
    """What `fhir-gateway worker` opens (open_services: its own store on the same SQLite file,
    its own Redis connections), with the Withings client pointed at the sandbox transport."""

    def factory(settings: Settings) -> AbstractAsyncContextManager[WorkerServices]:
        return open_services(
            settings,
            withings_transport=withings,
            overrides=ServiceOverrides(subscribe_spacing=0.0),
        )

    return factory


class WorkerPool:
    """arq Workers with our settings as asyncio tasks, each restarted when it dies (a lost Redis
    connection ends arq's main loop; in production the process supervisor restarts it)."""

    def __init__(
        self,
        settings: Settings,
        withings: httpx.AsyncBaseTransport,
        tuning: JobTuning,
        *,
        reconcile: bool = False,
    ) -> None:
        self._options = with_sweep_every(
            worker_settings(settings, worker_services(withings), tuning=tuning),
            SWEEP_EVERY_SECONDS,
            reconcile=reconcile,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[Worker | None] = []
        self._stopping = False
        self.restarts = 0

    def start(self, count: int) -> None:
        for slot in range(count):
            self._workers.append(None)
            self._tasks.append(asyncio.create_task(self._supervise(slot)))

    async def _supervise(self, slot: int) -> None:
        while not self._stopping:
            worker = Worker(**self._options, handle_signals=False, poll_delay=0.05)
            self._workers[slot] = worker
            try:
                await worker.async_run()
            except (redis.RedisError, OSError):
                self.restarts += 1
                self._workers[slot] = None
                await _dispose(worker)
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker is not None:
                try:
                    await worker.close()
                except (redis.RedisError, OSError):
                    await _dispose(worker)
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _dispose(worker: Worker) -> None:
    """Tear down a worker whose Redis went away: what close() does, minus the Redis calls."""
    worker.handle_sig(signal.SIGUSR1)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    if worker.on_shutdown is not None:
        try:
            await worker.on_shutdown(worker.ctx)
        except (redis.RedisError, OSError):
            pass  # its services' Redis is down too; the connections are closed regardless
    pool = worker.ctx.get("redis")
    if pool is not None:
        await pool.aclose(close_connection_pool=True)


@asynccontextmanager
async def running_workers(
    pipeline: Pipeline, count: int, tuning: JobTuning = FAST, *, reconcile: bool = False
) -> AsyncIterator[WorkerPool]:
    """`reconcile`: keep the reconciliation cron (see with_sweep_every)."""
    pool = WorkerPool(pipeline.settings, pipeline.traffic, tuning, reconcile=reconcile)
    pool.start(count)
    try:
        yield pool
    finally:
        await pool.stop()


# ---------------------------------------------------------------- waiting


async def settle_redis(pipeline: Pipeline, client: Redis, timeout: float) -> QueueSnapshot:
    """Wait until nothing is queued, running or waiting in the inbox; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = await queue_snapshot(client)
        inbox = await pipeline.inbox_size()
        if snapshot.idle and inbox == 0:
            return snapshot
        if time.monotonic() > deadline:
            leftovers = [record.data for record in await pipeline.store.list_records(INBOX_KIND)]
            dead = [record.data for record in await list_dead_letters(pipeline.store)]
            pytest.fail(
                f"pipeline did not settle in {timeout} s: {snapshot}; inbox={leftovers[:5]} "
                f"({inbox} records); dead letters={dead}"
            )
        await asyncio.sleep(0.1)


async def settle_in_process(pipeline: Pipeline, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            await pipeline.services.settle()
            if await pipeline.inbox_size() == 0:
                return
            await asyncio.sleep(0.05)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


# ---------------------------------------------------------------- Withings over the network


class CountingWithings:
    """ASGI wrapper of the sandbox: counts requests (and those in flight), each a little slow,
    as Withings is, so that a sync spans many moments a worker can be killed at."""

    def __init__(self, app: ASGIApp, delay: float) -> None:
        self.app = app
        self.delay = delay
        self.requests = 0
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port in this event loop; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        # "critical": workers killed mid-request make the sandbox log ClientDisconnect errors.
        app, host="127.0.0.1", port=port, lifespan="off", ws="none", log_level="critical",
        access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
                pytest.fail("the Withings sandbox server did not start")
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# ---------------------------------------------------------------- worker processes

ROOT = Path(__file__).resolve().parents[2]
TUNING_VARIABLE = "PIPELINE_JOB_TUNING"


def worker_environment(settings: Settings, tuning: JobTuning) -> dict[str, str]:
    """What `fhir-gateway worker` reads from the environment, for the same settings."""
    assert settings.redis_url is not None and settings.encryption_key is not None
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "DATA_DIR": str(settings.data_dir),
        "BASE_URL": settings.base_url,
        "WITHINGS_API_URL": settings.withings_api_url,
        "WITHINGS_CLIENT_ID": settings.withings_client_id or "",
        "WITHINGS_CLIENT_SECRET": settings.withings_client_secret or "",
        "ENCRYPTION_KEY": settings.encryption_key,
        "WITHINGS_REQUESTS_PER_MINUTE": str(settings.withings_requests_per_minute),
        "PYTHONPATH": str(ROOT),
        TUNING_VARIABLE: json.dumps(asdict(tuning)),
    }


class WorkerProcesses:
    """`python -m tests.pipeline.worker_process` children; all stopped (SIGTERM) at exit."""

    def __init__(self, settings: Settings, logs: Path, tuning: JobTuning) -> None:
        self._environment = worker_environment(settings, tuning)
        self._logs = logs
        self._processes: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        log = (self._logs / f"worker-{len(self._processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.pipeline.worker_process"],
            cwd=ROOT,
            env=self._environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def worker_processes(
    settings: Settings, logs: Path, tuning: JobTuning = FAST
) -> Iterator[WorkerProcesses]:
    processes = WorkerProcesses(settings, logs, tuning)
    try:
        yield processes
    finally:
        processes.stop_all()
