"""The served app for the search benchmark: the real app plus a bare baseline route.

The baseline answers with pre-captured bytes of the same search from the same process, server
and middleware, so the ratio search/bare isolates what parsing + store + Bundle assembly cost.
`BENCH_SEARCH_CACHE=off` turns the search response cache off, to measure every search in full.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.asgi import app_from_env
from fhir_gateway.fhir.routes import FhirApi


def _fhir_api(app: Starlette) -> FhirApi:
    # The wiring (app.py) keeps the FhirApi to itself; its endpoints are bound methods of it.
    for route in app.router.routes:
        api = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(api, FhirApi):
            return api
    raise RuntimeError("no FHIR routes in the app")


def create() -> Starlette:
    app = app_from_env()
    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    if os.environ.get("BENCH_SEARCH_CACHE", "on") == "off":
        _fhir_api(app).search_cache = None

    async def bare(request: Request) -> Response:
        return Response(body, media_type="application/fhir+json; charset=utf-8")

    app.router.routes.insert(0, Route("/__bare", bare, methods=["GET"]))
    return app
