"""open_services: the one place that builds the long-lived services (store, Withings, queue).

Used by the app's lifespan, the CLI and the worker's start-up, so all run the same wiring.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_gateway.config import Settings
from fhir_gateway.ingest.background import BackgroundTasks
from fhir_gateway.ingest.connect import CALLBACK_PATH, ConnectFlow
from fhir_gateway.ingest.subscriptions import SUBSCRIBE_SPACING_SECONDS, Subscriptions, WebhookUrl
from fhir_gateway.ingest.sync import SyncService
from fhir_gateway.jobs.budget import make_budget
from fhir_gateway.jobs.inbox import PROFILE_APPLI, Notification
from fhir_gateway.jobs.readiness import Readiness, check_readiness
from fhir_gateway.jobs.worker import InProcessRunner, JobRuntime, make_job_runtime
from fhir_gateway.locks import LockFactory, make_locks
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Store
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings.client import WithingsClient, make_withings_client
from fhir_gateway.withings.keys import load_keys
from fhir_gateway.withings.oauth_state import StateSigner, load_or_create_secret
from fhir_gateway.withings.sandbox import SandboxState, create_sandbox
from fhir_gateway.withings.tokens import TokenManager
from fhir_gateway.withings.vault import TokenVault
from fhir_gateway.withings.webhook import WebhookSecret, webhook_callback_url

STATE_SECRET_NAME = "oauth_state"
SANDBOX_MOUNT = "/sandbox/withings"
SANDBOX_CONSENT_PATH = "/oauth2_user/authorize2"
SANDBOX_CLIENT_ID = "fhir-gateway-sandbox"
# Withings' user-profile notification (§5.3, PROFILE_APPLI): `action` unlink/delete means the
# account is gone.
UNLINK_ACTIONS = frozenset({"unlink", "delete"})


@dataclass
class Services:
    settings: Settings
    store: Store
    withings: WithingsClient
    locks: LockFactory
    vault: TokenVault
    tokens: TokenManager
    state_signer: StateSigner
    subscriptions: Subscriptions
    sync: SyncService
    connect: ConnectFlow
    background: BackgroundTasks
    jobs: JobRuntime
    webhook_secret: WebhookSecret
    metrics: GatewayMetrics
    sandbox: SandboxState | None = None

    def __repr__(self) -> str:
        return f"Services(store={type(self.store).__name__}, sandbox={self.sandbox is not None})"

    async def on_notification(self, notification: Notification) -> str:
        """The webhook's hand-off; returns the outcome it counts.

        An unlinked account (appli 46, action unlink/delete) is flagged at once: its tokens are
        dead, so syncing it again could only fail. Other profile changes carry no data.
        """
        if notification.appli == PROFILE_APPLI:
            if notification.action not in UNLINK_ACTIONS:
                return "ignored_appli"
            await self.vault.mark_needs_reauth(notification.userid, "unlinked")
            return "unlinked"
        return await self.jobs.intake()(notification)

    async def readiness(self) -> Readiness:
        """GET /health/ready: store, Redis when configured, re-auth users, inbox, dead letters."""

        async def reauth_users() -> list[str]:
            return [user.userid for user in await self.vault.list_users(status="needs_reauth")]

        return await check_readiness(
            self.store,
            queue_ping=self.jobs.ping if self.settings.redis_url is not None else None,
            reauth_users=reauth_users,
        )

    async def settle(self) -> None:
        """Wait until this process's background work is done (tests, one-shot CLI commands)."""
        while True:
            await self.background.join()
            if isinstance(self.jobs, InProcessRunner):
                await self.jobs.queue.join()
            if not len(self.background):
                return


@dataclass(frozen=True, slots=True)
class ServiceOverrides:
    """Seams for tests and embedding; anything left None is built from the settings."""

    withings: WithingsClient | None = None  # not closed by open_services
    locks: LockFactory | None = None
    clock: Callable[[], float] | None = None
    subscribe_spacing: float = SUBSCRIBE_SPACING_SECONDS
    # A Withings simulator to expose as Services.sandbox (serve --sandbox).
    sandbox: SandboxState | None = None


class ServicesHolder:
    """Routes are built before the lifespan opens the services; they read them from here."""

    def __init__(self) -> None:
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("services are not open (lifespan not started)")
        return self._services

    def set(self, services: Services | None) -> None:
        self._services = services


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    store: Store | None = None,
    close_store: bool | None = None,
    withings_transport: httpx.AsyncBaseTransport | None = None,
    overrides: ServiceOverrides | None = None,
    metrics: GatewayMetrics | None = None,
    worker: bool = False,
) -> AsyncIterator[Services]:
    """Open everything; close what we opened. An injected store is opened but not closed.

    `worker`: for `fhir-gateway worker`, where arq runs the jobs: no in-process job runtime
    (its loops would duplicate the cron) and Redis is required.
    """
    options = overrides or ServiceOverrides()
    clock = options.clock or time.time
    gateway_metrics = metrics or GatewayMetrics()
    active_store = store if store is not None else make_store(settings)
    owns_store = store is None if close_store is None else close_store
    async with AsyncExitStack() as stack:
        await active_store.open()
        if owns_store:
            stack.push_async_callback(active_store.close)
        locks = options.locks
        if locks is None:
            owned_locks = make_locks(settings)
            stack.push_async_callback(owned_locks.aclose)
            locks = owned_locks
        withings = options.withings
        if withings is None:
            budget = None
            if not settings.sandbox:  # the in-process sandbox is not Withings' quota
                budget = make_budget(settings)
                stack.push_async_callback(budget.aclose)
            withings = make_withings_client(
                settings, withings_transport, budget=budget, on_call=gateway_metrics.withings_call
            )
            stack.push_async_callback(withings.aclose)

        vault = TokenVault(active_store, load_keys(settings), clock=clock)
        tokens = TokenManager(vault, withings, locks, clock=clock)
        signer = StateSigner(
            await load_or_create_secret(active_store, STATE_SECRET_NAME), active_store, clock
        )
        webhook_secret = WebhookSecret(active_store)
        subscriptions = Subscriptions(
            withings,
            tokens,
            vault,
            webhook_url_provider(settings, webhook_secret),
            spacing=options.subscribe_spacing,
        )
        sync = SyncService(
            active_store,
            withings,
            tokens,
            vault,
            subscriptions=subscriptions,
            clock=clock,
            metrics=gateway_metrics,
        )
        background = BackgroundTasks()
        stack.push_async_callback(background.close)
        jobs = make_job_runtime(
            settings, active_store, sync, metrics=gateway_metrics, worker=worker
        )
        await jobs.start()
        stack.push_async_callback(jobs.stop)

        async def backfill(userid: str) -> None:
            # The queue coalesces it with any notification-driven sync of the same user.
            await jobs.request_sync(userid, None)

        connect = ConnectFlow(
            store=active_store,
            client=withings,
            tokens=tokens,
            signer=signer,
            subscriptions=subscriptions,
            tasks=background,
            backfill=backfill,
            base_url=settings.base_url,
            authorize_url=settings.withings_authorize_url,
            client_id=settings.withings_client_id,
        )
        yield Services(
            settings=settings,
            store=active_store,
            withings=withings,
            locks=locks,
            vault=vault,
            tokens=tokens,
            state_signer=signer,
            subscriptions=subscriptions,
            sync=sync,
            connect=connect,
            background=background,
            jobs=jobs,
            webhook_secret=webhook_secret,
            metrics=gateway_metrics,
            sandbox=options.sandbox,
        )


def webhook_url_provider(settings: Settings, secret: WebhookSecret) -> WebhookUrl:
    """The notification callback URL `BASE_URL/webhooks/withings/{secret}` (never logged)."""

    async def webhook_url() -> str | None:
        return webhook_callback_url(settings.base_url, await secret())

    return webhook_url


# ---------------------------------------------------------------- serve --sandbox


@dataclass
class SandboxMode:
    """The Withings simulator mounted in the gateway, and settings that point the client at it.

    The browser sees it under BASE_URL/sandbox/withings; the Withings client sends its calls to
    the same mounted paths, through the gateway app in-process (an ASGI transport), so the demo
    needs no network and no Withings account, and exercises exactly what the browser does.
    """

    state: SandboxState
    app: ASGIApp
    settings: Settings
    # For the Withings client: its requests go through the gateway app (once attached).
    transport: httpx.AsyncBaseTransport = field(init=False)
    _gateway: ASGIApp | None = None
    _probe_client: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.transport = httpx.ASGITransport(app=self._through_gateway)

    async def _through_gateway(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The client is built (open_services) before the gateway app exists; it only sends
        # requests once the app serves, by which time attach() has run.
        if self._gateway is None:
            raise RuntimeError("the sandbox is not attached to a gateway app yet")
        await self._gateway(scope, receive, send)

    def attach(self, gateway: ASGIApp) -> None:
        """Route the client through `gateway`, and let the sandbox HEAD-probe and notify it
        in-process (§5.2)."""
        self._gateway = gateway
        self._probe_client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url=self.settings.base_url
        )
        self.state.probe_client = self._probe_client

    async def aclose(self) -> None:
        if self._probe_client is not None:
            await self._probe_client.aclose()


def sandbox_mode(settings: Settings) -> SandboxMode:
    """`serve --sandbox`: a fresh simulator with this gateway registered as its OAuth client."""
    base = settings.base_url.rstrip("/")
    state = SandboxState()
    client_secret = secrets.token_urlsafe(24)
    state.register_client(SANDBOX_CLIENT_ID, client_secret, [base + CALLBACK_PATH])
    pointed = settings.with_overrides(
        withings_client_id=SANDBOX_CLIENT_ID,
        withings_client_secret=client_secret,
        withings_api_url=f"{base}{SANDBOX_MOUNT}",
        withings_authorize_url=f"{base}{SANDBOX_MOUNT}{SANDBOX_CONSENT_PATH}",
    )
    return SandboxMode(state=state, app=create_sandbox(state), settings=pointed)


def sandbox_hint(settings: Settings) -> list[str]:
    """What `serve --sandbox` prints so that a newcomer can try the whole flow."""
    base = settings.base_url.rstrip("/")
    return [
        f"Withings sandbox mode: a simulated Withings answers in-process at {base}{SANDBOX_MOUNT}",
        f"  1. open {base}/auth/withings in a browser and click Allow",
        "  2. measurements appear as FHIR Observations within seconds",
        f"  3. curl -H 'Authorization: Bearer <token>' '{base}/Observation?_sort=-date&_count=5'",
    ]
