"""Values exchanged with Withings, shared by the client, the vault and the sync. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenSet:
    """One answer of the token endpoint. `userid` is always a string (Withings sends either)."""

    userid: str
    access_token: str
    refresh_token: str
    expires_at: float  # unix seconds
    scope: str

    def __repr__(self) -> str:  # tokens never reach logs through a repr
        return (
            f"TokenSet(userid={self.userid!r}, expires_at={self.expires_at}, scope={self.scope!r})"
        )

    @classmethod
    def from_body(cls, body: dict[str, Any], now: float) -> TokenSet:
        return cls(
            userid=str(body["userid"]),
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_at=now + float(body.get("expires_in", 10800)),
            scope=str(body.get("scope", "")),
        )


@dataclass(frozen=True, slots=True)
class MeasurePage:
    """One page of getmeas: raw groups as Withings sent them, plus paging and the profile zone."""

    groups: list[dict[str, Any]]
    timezone: str | None
    more: bool
    offset: int
    updatetime: int | None


@dataclass(frozen=True, slots=True)
class SeriesPage:
    """One page of getactivity / sleep getsummary."""

    rows: list[dict[str, Any]]
    more: bool
    offset: int
