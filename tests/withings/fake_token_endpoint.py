"""A fake Withings token endpoint with Withings' rotation rules, and a clock the tests move.

Rotation as withings-api.md §1.4 describes it: every refresh issues a new pair; the refresh token
that was used stays valid for 8 h after that, or until the new access token is first used.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fhir_gateway.errors import WithingsInvalidGrant
from fhir_gateway.withings.models import TokenSet

ACCESS_LIFETIME = 10_800.0  # 3 h
GRACE = 8 * 3600.0


class ManualClock:
    """Unix seconds that only move when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Grant:
    userid: str
    access_token: str
    refresh_token: str
    successors: list[_Grant] = field(default_factory=list)
    rotated_at: float | None = None  # when this refresh token was first exchanged
    access_used: bool = False


class FakeTokenEndpoint:
    """Implements `TokenEndpoint.refresh`; counts calls; can be told to fail."""

    def __init__(self, clock: ManualClock, *, latency: float = 0.0) -> None:
        self._clock = clock
        self._by_refresh: dict[str, _Grant] = {}
        self._by_access: dict[str, _Grant] = {}
        self.latency = latency  # seconds each refresh takes: widens the race windows
        self.refresh_calls: list[str] = []  # the refresh tokens presented, in order
        self.fail_with: Exception | None = None  # raised by every refresh while set
        self.issued: list[str] = []  # every token value handed out, for leak checks
        self.refusals: list[str] = []  # why each refused refresh was refused
        # Runs inside refresh() before the request "reaches" Withings: to stage interleavings.
        self.before_refresh: Callable[[], Awaitable[None]] | None = None

    def authorize(self, userid: str, scope: str = "user.metrics") -> TokenSet:
        """The authorization-code grant: a first pair for `userid`."""
        return self._issue(userid, scope)

    async def refresh(self, refresh_token: str) -> TokenSet:
        self.refresh_calls.append(refresh_token)
        if self.before_refresh is not None:
            await self.before_refresh()
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail_with is not None:
            raise self.fail_with
        refusal = self.refusal(refresh_token)
        if refusal is not None:
            self.refusals.append(refusal)
            raise WithingsInvalidGrant("Withings refused the refresh token (invalid_grant)")
        grant = self._by_refresh[refresh_token]
        if grant.rotated_at is None:
            grant.rotated_at = self._clock()
        successor = self._issue(grant.userid, "user.metrics")
        grant.successors.append(self._by_refresh[successor.refresh_token])
        return successor

    def use(self, access_token: str) -> bool:
        """A data call with `access_token`: True if accepted; ends the old refresh token's grace."""
        grant = self._by_access.get(access_token)
        if grant is None:
            return False
        grant.access_used = True
        return True

    def refusal(self, refresh_token: str) -> str | None:
        """Why a refresh with this token would be refused now, or None if it would work."""
        grant = self._by_refresh.get(refresh_token)
        if grant is None:
            return "unknown"
        if grant.rotated_at is None:
            return None  # never exchanged: the current refresh token
        if self._clock() >= grant.rotated_at + GRACE:
            return "grace expired"
        if any(successor.access_used for successor in grant.successors):
            return "successor access token used"
        return None

    def _issue(self, userid: str, scope: str) -> TokenSet:
        grant = _Grant(
            userid=userid,
            access_token=f"acc{secrets.token_hex(20)}",
            refresh_token=f"ref{secrets.token_hex(20)}",
        )
        self._by_refresh[grant.refresh_token] = grant
        self._by_access[grant.access_token] = grant
        self.issued += [grant.access_token, grant.refresh_token]
        return TokenSet(
            userid=userid,
            access_token=grant.access_token,
            refresh_token=grant.refresh_token,
            expires_at=self._clock() + ACCESS_LIFETIME,
            scope=scope,
        )
