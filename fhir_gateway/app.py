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
)
from fhir_gateway.fhir.access import StoreTokenAuthenticator
from fhir_gateway.fhir.http import error_response
from fhir_gateway.fhir.routes import FhirApi, fhir_routes
from fhir_gateway.jobs.inbox import Notification
from fhir_gateway.metrics import GatewayMetrics, metrics_route
from fhir_gateway.middleware import EdgeMiddleware
from fhir_gateway.services import (
    SANDBOX_MOUNT,
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


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    withings_transport: httpx.AsyncBaseTransport | None = None,
    overrides: ServiceOverrides | None = None,
    metrics: GatewayMetrics | None = None,
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
    app_metrics = metrics or GatewayMetrics()
    api = FhirApi(active_store, StoreTokenAuthenticator(active_store), settings.base_url)

    async def health(request: Request) -> Response:
        # Liveness only: no I/O, so a slow store never gets a live process restarted.
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        readiness = await holder.services.readiness()
        return JSONResponse(readiness.to_json(), status_code=200 if readiness.ready else 503)

    async def require_admin(request: Request) -> None:
        (await api.access(request)).require_admin()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(
            settings,
            store=active_store,
            close_store=owns_store,
            withings_transport=withings_transport,
            overrides=overrides,
            metrics=app_metrics,
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
        return await holder.services.on_notification(notification)

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        # Admin bearer token, like the workflow endpoints (see metrics_route for why).
        metrics_route(app_metrics.registry, authorize=require_admin),
        *withings_routes(holder, api, settings.base_url),
        *webhook_routes(active_store, webhook_secret, on_notification, metrics=app_metrics),
        # Before the FHIR routes: their /{type}/{id} pattern would shadow the mount.
        *([Mount(SANDBOX_MOUNT, app=sandbox.app)] if sandbox is not None else []),
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
