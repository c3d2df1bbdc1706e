"""Withings tokens at rest: one Fernet-encrypted record per user, written with compare-and-set.

Record layout (kind "withings_tokens", key = Withings userid); the record's own version is the
token_version that every write compares and sets:

    {"ciphertext": "gAAAA…",            # Fernet(JSON {userid, access_token, refresh_token,
                                        #              expires_at, scope, issued_at})
     "expires_at": 1700010800.0, "scope": "user.metrics",
     "status": "active" | "needs_reauth", "needs_reauth_reason": null,
     "updated_at": 1700000000.0}

Fernet has no associated data, so the userid is sealed inside the ciphertext and checked on
every read: a ciphertext copied onto another user's record is refused (reliability-anchors §2.4).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from fhir_gateway.errors import GatewayError, VersionConflict
from fhir_gateway.store.base import JSONObject, Record
from fhir_gateway.withings.keys import InvalidToken, MultiFernet
from fhir_gateway.withings.models import TokenSet

TOKENS_KIND = "withings_tokens"
LIST_LIMIT = 1_000_000
# A CAS loop that loses this many times in a row is contention, not bad luck: give up loudly.
MAX_CAS_ATTEMPTS = 5

TokenStatus = Literal["active", "needs_reauth"]

log = logging.getLogger(__name__)


class RecordStore(Protocol):
    """The compare-and-set record half of `store.base.Store`: all the vault and OAuth state need."""

    async def get_record(self, kind: str, key: str) -> Record | None: ...

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record: ...

    async def delete_record(self, kind: str, key: str) -> bool: ...

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]: ...


class VaultError(GatewayError):
    """Stored tokens that cannot be trusted or read; the message names the user, never a token."""


class TokenTampered(VaultError):
    """The ciphertext decrypts but was sealed for another user: it was moved between records."""


class TokenUndecryptable(VaultError):
    """No configured key opens the ciphertext (a key removed before `rotate_keys` ran?)."""


@dataclass(frozen=True, slots=True)
class StoredTokens:
    """A user's current tokens with the version to compare-and-set against."""

    tokens: TokenSet  # its repr hides the token values
    version: int
    status: TokenStatus
    needs_reauth_reason: str | None
    issued_at: float


@dataclass(frozen=True, slots=True)
class UserTokenStatus:
    """What listing users shows: no secrets, no decryption needed."""

    userid: str
    status: TokenStatus
    expires_at: float
    scope: str
    needs_reauth_reason: str | None


class TokenVault:
    """Encrypted per-user Withings tokens on top of the Store's compare-and-set records."""

    def __init__(
        self, store: RecordStore, fernet: MultiFernet, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._fernet = fernet
        self._clock = clock

    def __repr__(self) -> str:
        return f"TokenVault(store={type(self._store).__name__})"

    async def save(self, tokens: TokenSet, *, expected_version: int | None) -> int:
        """Encrypt and write `tokens` as active; CAS on `expected_version` (0 = new user)."""
        now = self._clock()
        record = await self._store.put_record(
            TOKENS_KIND,
            tokens.userid,
            self._record_data(tokens, issued_at=now, updated_at=now),
            expected_version=expected_version,
        )
        log.debug("saved withings tokens for user %s at version %d", tokens.userid, record.version)
        return record.version

    async def load(self, userid: str) -> StoredTokens | None:
        record = await self._store.get_record(TOKENS_KIND, userid)
        if record is None:
            return None
        payload = self._open(record)
        return StoredTokens(
            tokens=TokenSet(
                userid=userid,
                access_token=str(payload["access_token"]),
                refresh_token=str(payload["refresh_token"]),
                expires_at=float(payload["expires_at"]),
                scope=str(payload["scope"]),
            ),
            version=record.version,
            status=_status(record.data),
            needs_reauth_reason=_reason(record.data),
            issued_at=float(payload["issued_at"]),
        )

    async def mark_needs_reauth(
        self, userid: str, reason: str, *, expected_version: int | None = None
    ) -> bool:
        """Flag the user as needing to reconnect; False if no tokens are stored.

        With `expected_version`, raise VersionConflict if the tokens changed since that version
        (a concurrent refresh may have succeeded, so the flag would be wrong).
        `reason` is shown to operators: a short code such as "invalid_grant", never a token.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            record = await self._store.get_record(TOKENS_KIND, userid)
            if record is None:
                return False
            if expected_version is not None and record.version != expected_version:
                raise VersionConflict(f"withings tokens of user {userid} changed meanwhile")
            data = {
                **record.data,
                "status": "needs_reauth",
                "needs_reauth_reason": reason,
                "updated_at": self._clock(),
            }
            try:
                await self._store.put_record(
                    TOKENS_KIND, userid, data, expected_version=record.version
                )
            except VersionConflict:
                if expected_version is not None:
                    raise
                continue
            log.warning("withings user %s needs to reconnect (%s)", userid, reason)
            return True
        raise VersionConflict(f"withings tokens of user {userid} kept changing; flag not set")

    async def list_users(self, *, status: TokenStatus | None = None) -> list[UserTokenStatus]:
        """Every stored user (or those with `status`), read from the clear fields only."""
        where = None if status is None else {"status": status}
        records = await self._store.list_records(TOKENS_KIND, where=where, limit=LIST_LIMIT)
        return [
            UserTokenStatus(
                userid=record.key,
                status=_status(record.data),
                expires_at=float(record.data["expires_at"]),
                scope=str(record.data["scope"]),
                needs_reauth_reason=_reason(record.data),
            )
            for record in records
        ]

    async def rotate_keys(self) -> int:
        """Re-encrypt every record under the first key; return how many were rewritten.

        Each write is a CAS on the version just read, so a refresh that lands meanwhile is never
        overwritten: the record is re-read and rotated again. Records no key can open are left
        as they are and reported together at the end.
        """
        rotated = 0
        unreadable: list[str] = []
        for listed in await self._store.list_records(TOKENS_KIND, limit=LIST_LIMIT):
            try:
                if await self._rotate_one(listed):
                    rotated += 1
            except TokenUndecryptable:
                unreadable.append(listed.key)
        if unreadable:
            raise TokenUndecryptable(
                f"{len(unreadable)} withings token records could not be decrypted with the "
                f"configured keys (users: {', '.join(unreadable)}); {rotated} were rotated"
            )
        log.info("re-encrypted %d withings token records under the primary key", rotated)
        return rotated

    async def delete(self, userid: str) -> bool:
        return await self._store.delete_record(TOKENS_KIND, userid)

    # ------------------------------------------------------------------------------- internals

    async def _rotate_one(self, record: Record) -> bool:
        current: Record | None = record
        for _ in range(MAX_CAS_ATTEMPTS):
            if current is None:
                return False  # deleted meanwhile: nothing left to protect
            try:
                ciphertext = self._fernet.rotate(str(current.data["ciphertext"]).encode("ascii"))
            except InvalidToken:
                raise TokenUndecryptable(_undecryptable_message(current.key)) from None
            data = {**current.data, "ciphertext": ciphertext.decode("ascii")}
            try:
                await self._store.put_record(
                    TOKENS_KIND, current.key, data, expected_version=current.version
                )
            except VersionConflict:
                current = await self._store.get_record(TOKENS_KIND, current.key)
                continue
            return True
        raise VersionConflict(f"withings tokens of user {record.key} kept changing during rotation")

    def _record_data(self, tokens: TokenSet, *, issued_at: float, updated_at: float) -> JSONObject:
        payload = {
            "userid": tokens.userid,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at,
            "scope": tokens.scope,
            "issued_at": issued_at,
        }
        sealed = self._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
        return {
            "ciphertext": sealed.decode("ascii"),
            "expires_at": tokens.expires_at,
            "scope": tokens.scope,
            "status": "active",
            "needs_reauth_reason": None,
            "updated_at": updated_at,
        }

    def _open(self, record: Record) -> dict[str, Any]:
        try:
            plaintext = self._fernet.decrypt(str(record.data["ciphertext"]).encode("ascii"))
        except (InvalidToken, KeyError, UnicodeEncodeError):
            raise TokenUndecryptable(_undecryptable_message(record.key)) from None
        payload = cast(dict[str, Any], json.loads(plaintext))
        if payload.get("userid") != record.key:
            # Fernet authenticates the bytes, not where they sit: the userid seal is our binding.
            raise TokenTampered(
                f"withings token record of user {record.key} belongs to another user"
            )
        return payload


def _undecryptable_message(userid: str) -> str:
    return (
        f"withings tokens of user {userid} cannot be decrypted with the configured keys "
        "(was a key removed from ENCRYPTION_KEY before rotating?)"
    )


def _status(data: JSONObject) -> TokenStatus:
    return "needs_reauth" if data.get("status") == "needs_reauth" else "active"


def _reason(data: JSONObject) -> str | None:
    reason = data.get("needs_reauth_reason")
    return None if reason is None else str(reason)
