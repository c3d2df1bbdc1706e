"""The OAuth `state` parameter: signed, expiring and single use (RFC 6749 §10.12, CSRF).

Format: `<body>.<mac>`, both url-safe base64 without padding; body is compact JSON

    {"n": "<128-bit nonce>", "exp": 1700000600, "p": {"return_to": "/"}}

The payload is signed, not encrypted: the browser can read it, so it must hold no secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from fhir_gateway.errors import InvalidRequest, VersionConflict
from fhir_gateway.withings.vault import RecordStore

USED_STATE_KIND = "oauth_state_used"
SECRETS_KIND = "secrets"
SECRET_BYTES = 32  # 256 bits = the HMAC-SHA256 output size (RFC 2104 §3: keys shorter are weaker)
LIST_LIMIT = 100_000

StateProblem = Literal["malformed", "signature", "expired", "reused"]

_MESSAGES: dict[StateProblem, str] = {
    "malformed": "OAuth state is malformed",
    "signature": "OAuth state signature is invalid",
    "expired": "OAuth state has expired; start the connection again",
    "reused": "OAuth state was already used; start the connection again",
}


class InvalidState(InvalidRequest):
    """The `state` returned to the callback is not one we issued, is too old, or was replayed."""

    def __init__(self, problem: StateProblem) -> None:
        self.problem: StateProblem = problem
        super().__init__(_MESSAGES[problem])


class StateSigner:
    """Issues and consumes `state` values; replay protection lives in the Store."""

    def __init__(
        self, secret: bytes, store: RecordStore, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the state signing secret must be at least 128 bits")
        self._secret = secret
        self._store = store
        self._clock = clock

    def __repr__(self) -> str:
        return "StateSigner()"

    def issue(self, payload: dict[str, Any] | None = None, ttl: float = 600) -> str:
        """A fresh state carrying `payload`, valid for `ttl` seconds."""
        body = {
            "n": secrets.token_urlsafe(16),
            "exp": int(self._clock() + ttl),
            "p": payload or {},
        }
        encoded = _b64encode(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{encoded}.{_b64encode(self._mac(encoded))}"

    async def consume(self, state: str) -> dict[str, Any]:
        """Check signature and expiry, record the nonce as used, and return the payload."""
        encoded, separator, mac = state.partition(".")
        if not separator or not encoded or not mac:
            raise InvalidState("malformed")
        try:
            given_mac = _b64decode(mac)
        except ValueError:
            raise InvalidState("malformed") from None
        if not hmac.compare_digest(given_mac, self._mac(encoded)):
            raise InvalidState("signature")
        # Signed by us, so the body is well formed unless the key leaked; parse defensively anyway.
        try:
            body = json.loads(_b64decode(encoded))
            nonce, expires_at, payload = str(body["n"]), int(body["exp"]), body["p"]
        except (ValueError, KeyError, TypeError):
            raise InvalidState("malformed") from None
        if not isinstance(payload, dict):
            raise InvalidState("malformed")
        if self._clock() >= expires_at:
            raise InvalidState("expired")
        try:
            # expected_version=0: "must not exist", so two callbacks racing with one state
            # cannot both pass; the store decides atomically.
            await self._store.put_record(
                USED_STATE_KIND, nonce, {"expires_at": expires_at}, expected_version=0
            )
        except VersionConflict:
            raise InvalidState("reused") from None
        return payload

    async def purge_used(self) -> int:
        """Forget used nonces whose state has expired anyway (replay is refused as expired)."""
        now = self._clock()
        purged = 0
        for record in await self._store.list_records(USED_STATE_KIND, limit=LIST_LIMIT):
            if float(record.data.get("expires_at", 0)) <= now:
                purged += await self._store.delete_record(USED_STATE_KIND, record.key)
        return purged

    def _mac(self, encoded_body: str) -> bytes:
        return hmac.new(self._secret, encoded_body.encode("ascii"), hashlib.sha256).digest()


async def load_or_create_secret(store: RecordStore, name: str) -> bytes:
    """The 256-bit secret `name`, created on first use; every process ends up with the same one."""
    record = await store.get_record(SECRETS_KIND, name)
    if record is None:
        candidate = _b64encode(secrets.token_bytes(SECRET_BYTES))
        try:
            record = await store.put_record(
                SECRETS_KIND, name, {"value": candidate}, expected_version=0
            )
        except VersionConflict:
            # Another process created it first: theirs is the one everybody uses.
            record = await store.get_record(SECRETS_KIND, name)
            if record is None:
                raise
    return _b64decode(str(record.data["value"]))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not url-safe base64") from exc
