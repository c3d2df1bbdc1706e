"""Who may read what: bearer tokens and the patient compartment.

This is the seam SMART App Launch plugs into: an `Authenticator` turns the Authorization header
into an `AccessContext`; routes only ever ask the context. Today's implementation checks opaque
tokens minted by `fhir-gateway token create`, stored as SHA-256 hashes (never the token itself).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from fhir_gateway.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from fhir_gateway.store.base import Store

ACCESS_TOKEN_KIND = "access_tokens"
TOKEN_PREFIX = "fgw_"
ADMIN_SCOPE = "admin"
DEFAULT_SYSTEM_SCOPE = "system/*.rs"
DEFAULT_PATIENT_SCOPE = "patient/*.rs"

# SMART v1 (`read`, `*`) and v2 (`rs`, `cruds` subsets) permission spellings.
_SCOPE = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>\w+|\*)"
)


@dataclass(frozen=True, slots=True)
class Scope:
    context: str
    resource_type: str
    can_read: bool

    @classmethod
    def parse(cls, text: str) -> Scope:
        match = _SCOPE.fullmatch(text)
        if match is None:
            raise InvalidRequest(f"unsupported scope {text!r}")
        permission = match["perm"]
        can_read = permission in {"read", "*"} or (
            set(permission) <= set("cruds") and "r" in permission
        )
        return cls(match["context"], match["type"], can_read)


@dataclass(frozen=True, slots=True)
class AccessContext:
    """What the caller may see: a patient compartment (or all patients) and resource types."""

    patient_id: str | None
    scopes: tuple[Scope, ...]
    admin: bool = False

    def can_read(self, resource_type: str) -> bool:
        return any(
            scope.can_read and scope.resource_type in {"*", resource_type} for scope in self.scopes
        )

    def require_read(self, resource_type: str) -> None:
        if not self.can_read(resource_type):
            raise Forbidden(f"the access token does not grant read access to {resource_type}")

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this operation needs an admin token")

    def require_patient_visible(self, patient_id: str | None) -> None:
        """Outside the caller's compartment is indistinguishable from absent (no existence leak)."""
        if self.patient_id is not None and patient_id != self.patient_id:
            raise NotFound("resource not found")


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> AccessContext: ...


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(scope_text: str) -> tuple[tuple[Scope, ...], bool]:
    words = scope_text.split()
    admin = ADMIN_SCOPE in words
    return tuple(Scope.parse(word) for word in words if word != ADMIN_SCOPE), admin


class StoreTokenAuthenticator:
    """Opaque bearer tokens whose SHA-256 digests are records in the Store.

    Valid tokens are remembered for `cache_seconds` so the hot path costs no store round trip;
    a revoked token therefore stops working within that time. Unknown tokens are never cached.
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 4096,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, AccessContext]] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> AccessContext:
        if not authorization:
            raise Unauthorized("an 'Authorization: Bearer <token>' header is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must use the Bearer scheme")
        digest = token_digest(token)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self._store.get_record(ACCESS_TOKEN_KIND, digest)
        if record is None or record.data.get("revoked"):
            self._cache.pop(digest, None)
            raise Unauthorized("the access token is not valid")
        scopes, admin = parse_scopes(str(record.data["scope"]))
        patient = record.data.get("patient")
        context = AccessContext(
            patient_id=str(patient) if patient else None, scopes=scopes, admin=admin
        )
        self._cache[digest] = (now + self._cache_seconds, context)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return context


async def create_access_token(
    store: Store, *, patient_id: str | None = None, scope: str | None = None, label: str = ""
) -> str:
    """Mint a random token, store only its digest, and return the token (shown once)."""
    scope_text = scope or (DEFAULT_PATIENT_SCOPE if patient_id else DEFAULT_SYSTEM_SCOPE)
    scopes, _admin = parse_scopes(scope_text)
    if patient_id is None and any(s.context == "patient" for s in scopes):
        raise InvalidRequest("a patient/ scope needs --patient")
    if patient_id is not None and any(s.context == "system" for s in scopes):
        raise InvalidRequest("a token bound to one patient cannot carry system/ scopes")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await store.put_record(
        ACCESS_TOKEN_KIND,
        token_digest(token),
        {
            "scope": scope_text,
            "patient": patient_id,
            "label": label,
            "created_at": datetime.now(UTC).isoformat(),
        },
        expected_version=0,
    )
    return token


async def has_access_tokens(store: Store) -> bool:
    return bool(await store.list_records(ACCESS_TOKEN_KIND, limit=1))
