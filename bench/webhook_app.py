"""The served app for the webhook benchmark: the real app plus a bare notification endpoint.

`POST /__bare_webhook` reads the body and answers 200 from the same process, server and
middleware, so webhook/bare isolates what the ack path itself costs (secret check, parsing, the
user lookup, the inbox write, the coalescer and the arq enqueue).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.asgi import app_from_env


def create() -> Starlette:
    app = app_from_env()

    async def bare_webhook(request: Request) -> Response:
        await request.body()  # a notification endpoint receives the body before answering
        return Response(status_code=200)

    app.router.routes.insert(0, Route("/__bare_webhook", bare_webhook, methods=["POST"]))
    return app
