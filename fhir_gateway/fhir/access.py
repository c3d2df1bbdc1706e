"""Who may read what: bearer tokens and the patient compartment.

This is the seam SMART App Launch plugs into: an `Authenticator` turns the Authorization header
into an `AccessContext`; routes only ever ask the context. Today's implementation checks opaque
tokens minted by `fhir-gateway token create`, stored as SHA-256 hashes (never the token itself).
"""

from __future__ import annotations

import hashlib
import re
import secrets
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
    """Opaque bearer tokens whose SHA-256 digests are records in the Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def authenticate(self, authorization: str | None) -> AccessContext:
        if not authorization:
            raise Unauthorized("an 'Authorization: Bearer <token>' header is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must use the Bearer scheme")
        record = await self._store.get_record(ACCESS_TOKEN_KIND, token_digest(token))
        if record is None or record.data.get("revoked"):
            raise Unauthorized("the access token is not valid")
        scopes, admin = parse_scopes(str(record.data["scope"]))
        patient = record.data.get("patient")
        return AccessContext(
            patient_id=str(patient) if patient else None, scopes=scopes, admin=admin
        )


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
