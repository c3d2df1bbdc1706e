"""The served app for the search benchmark: the real app plus a bare baseline route.

The baseline answers with pre-captured bytes of the same search from the same process, server
and middleware, so the ratio search/bare isolates what parsing + store + Bundle assembly cost.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.asgi import app_from_env


def create() -> Starlette:
    app = app_from_env()
    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()

    async def bare(request: Request) -> Response:
        return Response(body, media_type="application/fhir+json; charset=utf-8")

    app.router.routes.insert(0, Route("/__bare", bare, methods=["GET"]))
    return app
