"""HTTP mechanics of the FHIR edge: content negotiation, FHIR JSON responses, conditional reads."""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhir_gateway.errors import GatewayError, NotAcceptable, UnsupportedMediaType
from fhir_gateway.fhir.outcome import operation_outcome
from fhir_gateway.store.base import StoredResource

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

_FORMAT_ALIASES = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    PLAIN_JSON: PLAIN_JSON,
    "text/json": PLAIN_JSON,
}
_ACCEPTABLE = {FHIR_JSON, PLAIN_JSON, "application/*", "*/*", "text/json"}


def negotiate(request: Request) -> str:
    """The response media type, from `_format` (which overrides Accept) or Accept.

    FHIR R4 http.html#mime-type: JSON only here; XML or anything else → 406.
    """
    # Most requests carry no _format: do not parse the query string just to find that out
    # (a percent sign could spell it in escapes, so then parse).
    raw_query: bytes = request.scope.get("query_string", b"")
    may_have_format = b"_format" in raw_query or b"%" in raw_query
    requested_format = request.query_params.get("_format") if may_have_format else None
    if requested_format:
        media_type = _FORMAT_ALIASES.get(requested_format.split(";")[0].strip().lower())
        if media_type is None:
            raise NotAcceptable(f"_format {requested_format!r} is not supported; use json")
        return media_type
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if FHIR_JSON in offered:
        return FHIR_JSON
    if PLAIN_JSON in offered or "text/json" in offered:
        return PLAIN_JSON
    if any(media in _ACCEPTABLE for media in offered):
        return FHIR_JSON
    raise NotAcceptable(f"cannot produce {accept!r}; this server speaks {FHIR_JSON}")


def require_form(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM:
        raise UnsupportedMediaType(f"POST _search needs {FORM}, got {content_type or 'nothing'!r}")


def fhir_response(
    body: bytes | dict[str, Any],
    *,
    status: int = 200,
    media_type: str = FHIR_JSON,
    headers: dict[str, str] | None = None,
) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(
        content, status_code=status, media_type=f"{media_type}; charset=utf-8", headers=headers
    )


def error_response(exc: GatewayError, media_type: str = FHIR_JSON) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="fhir-gateway"'} if exc.status == 401 else None
    return fhir_response(
        operation_outcome(exc.issue_code, str(exc)),
        status=exc.status,
        media_type=media_type,
        headers=headers,
    )


def version_headers(stored: StoredResource) -> dict[str, str]:
    return {
        "ETag": f'W/"{stored.version_id}"',
        "Last-Modified": format_datetime(stored.last_updated.replace(microsecond=0), usegmt=True),
    }


def not_modified(request: Request, stored: StoredResource) -> bool:
    """If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        etag = f'W/"{stored.version_id}"'
        candidates = {tag.strip() for tag in if_none_match.split(",")}
        # Weak comparison: W/"3" and "3" name the same version.
        return "*" in candidates or etag in candidates or etag[2:] in candidates
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return stored.last_updated.replace(microsecond=0) <= since
    return False
