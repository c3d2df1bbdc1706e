"""create_app: wiring only. Routes, middleware, error mapping and the lifespan live here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from fhir_gateway.config import Settings
from fhir_gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    StoreError,
)
from fhir_gateway.fhir.access import StoreTokenAuthenticator
from fhir_gateway.fhir.http import error_response
from fhir_gateway.fhir.routes import FhirApi, fhir_routes
from fhir_gateway.jobs.inbox import Notification
from fhir_gateway.middleware import EdgeMiddleware
from fhir_gateway.services import (
    SANDBOX_CONSENT_PATH,
    SANDBOX_MOUNT,
    SandboxMode,
    ServiceOverrides,
    ServicesHolder,
    open_services,
    sandbox_mode,
)
from fhir_gateway.store.base import Store
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings.routes import withings_routes
from fhir_gateway.withings.webhook import webhook_routes

logger = logging.getLogger("fhir_gateway.app")
MAX_BODY_BYTES = 1024 * 1024
_NO_OVERRIDES = ServiceOverrides()


async def on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if exc.status >= 500:
        logger.error("request failed: %s", exc, exc_info=exc)
    return error_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    mapped: GatewayError
    if exc.status_code == 405:
        mapped = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif exc.status_code == 413:
        mapped = PayloadTooLarge("the request body is too large")
    elif exc.status_code == 404:
        mapped = NotFound("no such endpoint")
    else:
        mapped = GatewayError(exc.detail)
        mapped.status = exc.status_code
        mapped.issue_code = "processing"
    return error_response(mapped)


def sandbox_routes(sandbox: SandboxMode) -> list[BaseRoute]:
    """The simulator under /sandbox/withings; its consent form posts to the root path it has
    on its own host, so that one path is routed to it as well (raw, no prefix stripped)."""
    return [
        Mount(SANDBOX_MOUNT, app=sandbox.app),
        Route(SANDBOX_CONSENT_PATH, sandbox.app, methods=["POST"]),
    ]


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    withings_transport: httpx.AsyncBaseTransport | None = None,
    overrides: ServiceOverrides | None = None,
) -> Starlette:
    """The ASGI application. Pass `store` (and the other seams) to inject them (tests); else
    built from settings. With settings.sandbox the Withings simulator is mounted and used."""
    sandbox = None
    if (
        settings.sandbox
        and withings_transport is None
        and (overrides or _NO_OVERRIDES).withings is None
    ):
        sandbox = sandbox_mode(settings)
        settings = sandbox.settings
        withings_transport = sandbox.transport
        overrides = replace(overrides or _NO_OVERRIDES, sandbox=sandbox.state)
    owns_store = store is None
    active_store: Store = store if store is not None else make_store(settings)
    holder = ServicesHolder()
    api = FhirApi(active_store, StoreTokenAuthenticator(active_store), settings.base_url)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        checks: dict[str, str] = {}
        healthy = True
        try:
            await active_store.ping()
            checks["store"] = "ok"
        except StoreError:
            checks["store"] = "unavailable"
            healthy = False
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status_code=200 if healthy else 503,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(
            settings,
            store=active_store,
            close_store=owns_store,
            withings_transport=withings_transport,
            overrides=overrides,
        ) as services:
            holder.set(services)
            try:
                yield
            finally:
                holder.set(None)
                if sandbox is not None:
                    await sandbox.aclose()

    async def webhook_secret() -> str:
        return await holder.services.webhook_secret()

    async def on_notification(notification: Notification) -> str:
        return await holder.services.jobs.intake()(notification)

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        *withings_routes(holder, api, settings.base_url),
        *webhook_routes(active_store, webhook_secret, on_notification),
        # Before the FHIR routes: their /{type}/{id} pattern would shadow the mount.
        *(sandbox_routes(sandbox) if sandbox is not None else []),
        *fhir_routes(api),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(EdgeMiddleware, max_body_bytes=MAX_BODY_BYTES)],
        exception_handlers={
            GatewayError: on_gateway_error,
            HTTPException: on_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = active_store
    app.state.services = holder
    if sandbox is not None:
        sandbox.attach(app)
    return app
