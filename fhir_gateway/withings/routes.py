"""Withings HTTP endpoints: connect (OAuth2), the manual sync workflow and its Observation alias.

People reach /auth/withings in a browser, so its errors are HTML pages; the workflow endpoints
are API calls and answer JSON or an OperationOutcome like the FHIR routes.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fhir_gateway.errors import (
    ConfigError,
    GatewayError,
    NotFound,
    WithingsAuthError,
    WithingsInvalidParams,
    WithingsUnauthorizedService,
)
from fhir_gateway.fhir.routes import FhirApi
from fhir_gateway.ingest.connect import Connection
from fhir_gateway.services import ServicesHolder

log = logging.getLogger(__name__)

# Withings said no (a dead or reused code, a refused grant): retrying the same link cannot help.
_REFUSALS = (WithingsAuthError, WithingsInvalidParams, WithingsUnauthorizedService)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
pre{{background:#f4f4f4;padding:.8rem;overflow-x:auto}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    # no-store: the page answers a one-time code; a back button must not replay it from cache.
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body),
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _connected_page(base_url: str, connection: Connection) -> HTMLResponse:
    patient = connection.patient_id
    query = f"{base_url}/Observation?patient={quote(patient)}&_sort=-date&_count=10"
    sample = f"curl -H 'Authorization: Bearer <your access token>' '{query}'"
    body = (
        f"<p>Withings user <strong>{html.escape(connection.userid)}</strong> is connected as "
        f"FHIR <code>Patient/{html.escape(patient)}</code>.</p>"
        "<p>Their measurements are being imported now and kept current from then on.</p>"
        f"<p>Query them, for example:</p><pre>{html.escape(sample)}</pre>"
    )
    return _page("Withings connected", body)


def _error_page(error: GatewayError) -> HTMLResponse:
    if isinstance(error, ConfigError):
        status, hint = 503, "The gateway's Withings app credentials are not configured."
    elif isinstance(error, _REFUSALS) or error.status < 500:
        status, hint = 400, "Start again from the connection link."
    else:
        status, hint = 502, "Withings or the gateway is unavailable; try again in a minute."
    body = (
        f"<p>The Withings account could not be connected: {html.escape(str(error))}.</p>"
        f'<p>{html.escape(hint)} <a href="/auth/withings">Connect Withings</a></p>'
    )
    return _page("Withings connection failed", body, status)


def withings_routes(holder: ServicesHolder, fhir: FhirApi, base_url: str) -> list[Route]:
    """The routes; `fhir` authenticates the workflow calls and serves the Observation alias."""
    base = base_url.rstrip("/")

    async def authorize(request: Request) -> Response:
        try:
            target = holder.services.connect.authorize_redirect()
        except GatewayError as error:
            return _error_page(error)
        return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store"})

    async def callback(request: Request) -> Response:
        params = request.query_params
        try:
            connection = await holder.services.connect.complete(
                code=params.get("code"), state=params.get("state"), error=params.get("error")
            )
        except GatewayError as error:
            # Never a traceback, never the code: the class and our own message only.
            log.warning("withings callback refused: %s: %s", type(error).__name__, error)
            return _error_page(error)
        return _connected_page(base, connection)

    async def sync(request: Request) -> Response:
        context = await fhir.access(request)
        context.require_admin()
        services = holder.services
        userid = request.query_params.get("userid")
        if userid is not None:
            if await services.vault.load(userid) is None:
                raise NotFound(f"Withings user {userid} is not connected")
            report = await services.sync.sync(userid)
            return JSONResponse({"users": [report.to_json()]})
        summary = await services.sync.sync_all()
        return JSONResponse(summary.to_json())

    async def observations(request: Request) -> Response:
        # An alias, not a copy: the FHIR search itself answers, so paging, compartments and
        # errors are identical to GET /Observation.
        request.scope["path_params"] = {**request.path_params, "type": "Observation"}
        return await fhir.search_get(request)

    return [
        Route("/auth/withings", authorize, methods=["GET"]),
        Route("/auth/withings/callback", callback, methods=["GET"]),
        Route("/workflows/withings/sync", sync, methods=["POST"]),
        Route("/workflows/withings/observations", observations, methods=["GET"]),
    ]
