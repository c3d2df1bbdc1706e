"""The Withings notification endpoint `/webhooks/withings/{secret}` (withings-api §5).

Notifications are unsigned and carry no event id (§5.6), so the URL holds a 256-bit secret,
compared in constant time; a wrong secret gets exactly the 404 of an unknown path (no oracle).
HEAD/GET answer the registration probe (§5.2). A POST is validated strictly, then handed to
`on_notification` (inbox first, then the queue); Withings gets its 2xx without waiting on
Withings or on Redis (§5.5: 2xx within ~2 s, or it retries and eventually unsubscribes).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import date as calendar_date
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_gateway.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    StoreError,
    UnsupportedMediaType,
    VersionConflict,
)
from fhir_gateway.fhir.http import FORM, error_response
from fhir_gateway.jobs.inbox import PROFILE_APPLI, SYNCED_APPLIS, Notification
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Store
from fhir_gateway.withings.vault import TOKENS_KIND

logger = logging.getLogger("fhir_gateway.webhook")

WEBHOOK_PATH = "/webhooks/withings/{secret}"
SECRETS_KIND = "secrets"
WEBHOOK_SECRET_KEY = "withings_webhook"
# Categories handed to `on_notification` (withings-api §5.3): the ones we sync, and 46, the user
# profile, whose action unlink/delete means the account is gone. Others (50-52 bed events …)
# are acknowledged and ignored.
HANDLED_APPLIS = SYNCED_APPLIS | {PROFILE_APPLI}

MAX_BODY_BYTES = 2048
MAX_FIELDS = 16
_DIGITS = re.compile(r"[0-9]{1,20}")
_EPOCH = re.compile(r"[0-9]{1,12}")
_APPLI = re.compile(r"[0-9]{1,4}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ACTION = re.compile(r"[A-Za-z_]{1,32}")
_KNOWN_FIELDS = ("userid", "appli", "startdate", "enddate", "date", "deviceid", "action")

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

SecretProvider = Callable[[], Awaitable[str]]
OnNotification = Callable[[Notification], Awaitable[str]]


async def load_or_create_webhook_secret(store: Store) -> str:
    """The URL secret, created once (CAS expected_version=0) so every process agrees on it."""
    record = await store.get_record(SECRETS_KIND, WEBHOOK_SECRET_KEY)
    if record is not None:
        return str(record.data["value"])
    try:
        created = await store.put_record(
            SECRETS_KIND,
            WEBHOOK_SECRET_KEY,
            {"value": secrets.token_urlsafe(32)},  # 256 bits (reliability-anchors §1.3)
            expected_version=0,
        )
    except VersionConflict:
        # Another process created it first: use theirs.
        winner = await store.get_record(SECRETS_KIND, WEBHOOK_SECRET_KEY)
        if winner is None:
            raise
        return str(winner.data["value"])
    return str(created.data["value"])


class WebhookSecret:
    """A SecretProvider that loads the secret once per process."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._value: str | None = None

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"

    async def __call__(self) -> str:
        if self._value is None:
            self._value = await load_or_create_webhook_secret(self._store)
        return self._value


def webhook_callback_url(base_url: str, secret: str) -> str:
    """The URL to subscribe with (`notify subscribe callbackurl`); never log it."""
    return base_url.rstrip("/") + WEBHOOK_PATH.format(secret=secret)


def parse_notification(body: bytes) -> Notification:
    """Strictly validate a form-encoded notification body; InvalidRequest on anything odd.

    Example: b"userid=12345&appli=1&startdate=1530576000&enddate=1530698753".
    """
    try:
        text = body.decode("ascii")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not a form-encoded notification") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in _KNOWN_FIELDS:
            if name in fields:
                raise InvalidRequest(f"{name} is repeated")
            fields[name] = value

    def matching(name: str, pattern: re.Pattern[str]) -> str | None:
        value = fields.get(name)
        if value is None:
            return None
        if not pattern.fullmatch(value):
            raise InvalidRequest(f"{name} is malformed")
        return value

    userid = matching("userid", _DIGITS)
    appli = matching("appli", _APPLI)
    if userid is None or appli is None:
        raise InvalidRequest("userid and appli are required")
    start = matching("startdate", _EPOCH)
    end = matching("enddate", _EPOCH)
    if (start is None) != (end is None):
        raise InvalidRequest("startdate and enddate come together")
    if start is not None and end is not None and int(start) > int(end):
        raise InvalidRequest("startdate is after enddate")
    day = fields.get("date")
    if day is not None:
        if _DAY.fullmatch(day):
            try:
                calendar_date.fromisoformat(day)
            except ValueError:
                raise InvalidRequest("date is not a calendar day") from None
        elif not _EPOCH.fullmatch(day):
            raise InvalidRequest("date must be YYYY-MM-DD or epoch seconds")
    return Notification(
        userid=str(int(userid)),
        appli=int(appli),
        startdate=None if start is None else int(start),
        enddate=None if end is None else int(end),
        date=day,
        deviceid=matching("deviceid", _DEVICE_ID),
        action=matching("action", _ACTION),
    )


async def _read_body(request: Request) -> bytes:
    """The body, but never more than MAX_BODY_BYTES of it (a notification is ~100 bytes)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidRequest("the body is too large for a notification")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequest("the body is too large for a notification")
    return body


def webhook_routes(
    store: Store,
    secret_provider: SecretProvider,
    on_notification: OnNotification,
    *,
    metrics: GatewayMetrics | None = None,
) -> list[Route]:
    """The notification endpoint; `on_notification` is NotificationIntake (jobs/inbox.py)."""

    def count(outcome: str) -> None:
        if metrics is not None:
            metrics.notification(outcome)

    async def notification_endpoint(request: Request) -> Response:
        offered = request.path_params["secret"].encode()
        expected = (await secret_provider()).encode()
        if not hmac.compare_digest(offered, expected):
            count("bad_secret")
            return error_response(NotFound("no such endpoint"))
        if request.method in ("HEAD", "GET"):
            return Response(status_code=200)  # the registration probe (withings-api §5.2)
        if request.method != "POST":
            return error_response(MethodNotAllowed(f"{request.method} is not allowed here"))
        try:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != FORM:
                raise UnsupportedMediaType(f"notifications are {FORM}")
            notification = parse_notification(await _read_body(request))
        except (InvalidRequest, UnsupportedMediaType) as exc:
            count("malformed")
            return error_response(exc)
        if notification.appli not in HANDLED_APPLIS:
            count("ignored_appli")
            return Response(status_code=200)
        try:
            if await store.get_record(TOKENS_KIND, notification.userid) is None:
                # Not ours (or a guess): acknowledge, do nothing, reveal nothing.
                count("unknown_user")
                return Response(status_code=200)
            outcome = await on_notification(notification)
        except StoreError as exc:
            # Not recorded anywhere: a 5xx makes Withings retry (withings-api §5.5).
            logger.error("notification not recorded: %s", type(exc).__name__)
            count("store_error")
            return error_response(StoreError("the notification could not be recorded"))
        count(outcome)
        return Response(status_code=200)

    # Every method reaches the handler, so a wrong secret is a 404 whatever the method.
    return [Route(WEBHOOK_PATH, notification_endpoint, methods=_ALL_METHODS)]
