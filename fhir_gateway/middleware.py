"""The outermost ASGI layer: request ids, body limits, the last-resort 500, access log lines.

Pure ASGI (no BaseHTTPMiddleware) because it wraps every request on the hot path.
"""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_gateway.errors import GatewayError, PayloadTooLarge
from fhir_gateway.fhir.http import error_response
from fhir_gateway.logs import redact, request_id_var

logger = logging.getLogger("fhir_gateway.access")
errors_logger = logging.getLogger("fhir_gateway.app")
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _new_request_id() -> str:
    # Not uuid4(): os.urandom is a system call per request on the hot path, and request ids need
    # uniqueness, not secrecy (`random` is seeded by the OS and reseeded after fork).
    return f"{random.getrandbits(128):032x}"


class EdgeMiddleware:
    """Reuses a sane incoming X-Request-ID or makes one, echoes it, enforces the body limit,
    turns any unexpected exception into an OperationOutcome 500 quoting the request id, and
    logs one line per request (path secrets redacted)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        content_length = 0
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                content_length = int(value)
        request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else _new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0
        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request bodies are limited to {limit} bytes")
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if content_length > limit:
                await self._fail(
                    PayloadTooLarge(f"request bodies are limited to {limit} bytes"),
                    scope,
                    receive,
                    send_with_id,
                )
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception as exc:  # the last resort: whatever escaped every handler
            if status:
                raise  # the response has started; nothing sane can be sent any more
            if isinstance(exc, GatewayError) and exc.status < 500:
                await self._fail(exc, scope, receive, send_with_id)
            else:
                errors_logger.exception("unhandled error", exc_info=exc)
                error = GatewayError(f"internal error; quote request id {request_id} to report it")
                await self._fail(error, scope, receive, send_with_id)
        finally:
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "%s %s %s",
                    scope["method"],
                    redact(scope["path"]),
                    status,
                    extra={"duration_ms": round((time.perf_counter() - started) * 1000, 3)},
                )
            request_id_var.reset(token)

    @staticmethod
    async def _fail(error: GatewayError, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(error)(scope, receive, send)
