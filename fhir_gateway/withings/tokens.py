"""A valid Withings access token per user, refreshed once however many workers ask at the same time.

Withings rotates the refresh token on every refresh; the previous one stays valid for 8 h or until
the new access token is first used (withings-api.md §1.4). So the recipe
(reliability-anchors §2.3) is: lock per user → re-read → refresh → persist with compare-and-set →
only then hand out the new access token. A crash before the write leaves the old refresh token in
the vault, still inside Withings' grace window because the new access token was never used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from fhir_gateway.errors import GatewayError, VersionConflict, WithingsError, WithingsInvalidGrant
from fhir_gateway.locks import LockFactory, LockUnavailable
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.vault import StoredTokens, TokenVault

# Withings allows 10 s per token request in our client; the lease covers it with room to spare.
LOCK_TIMEOUT = 30.0
# Losing the CAS this often in a row means something else keeps rewriting the tokens.
MAX_ATTEMPTS = 3

log = logging.getLogger(__name__)


class TokenEndpoint(Protocol):
    """What the manager needs from the Withings client."""

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Exchange a refresh token; WithingsInvalidGrant if refused for good."""
        ...


class NeedsReauth(GatewayError):
    """The user's Withings link is broken (refresh refused or never made): they must reconnect.

    Not retryable: syncs for this user stop until a new consent stores fresh tokens.
    """

    status, issue_code = 409, "business-rule"

    def __init__(self, userid: str, reason: str) -> None:
        self.userid = userid
        self.reason = reason
        super().__init__(f"Withings user {userid} must reconnect ({reason})")


class TokenManager:
    """Hands out access tokens; the only code that refreshes them (one source of truth)."""

    def __init__(
        self,
        vault: TokenVault,
        endpoint: TokenEndpoint,
        locks: LockFactory,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 300,
        *,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self._vault = vault
        self._endpoint = endpoint
        self._locks = locks
        self._clock = clock
        self._refresh_margin = refresh_margin
        self._lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"TokenManager(refresh_margin={self._refresh_margin})"

    async def access_token(self, userid: str, *, rejected: str | None = None) -> str:
        """A token valid for at least `refresh_margin` seconds; NeedsReauth if none can be had.

        `rejected`: the token a Withings call just refused (401, WithingsAuthError) although
        it had not expired, e.g. revoked early. It is refreshed whatever its expiry, unless the
        stored token already differs: then someone refreshed meanwhile and theirs is handed out.
        """
        stored = _usable(userid, await self._vault.load(userid))
        if self._still_good(stored, rejected):
            return stored.tokens.access_token
        try:
            async with self._locks.lock(f"withings-refresh:{userid}", timeout=self._lock_timeout):
                return await self._refresh_under_lock(userid, rejected)
        except LockUnavailable:
            # The holder may have finished just as our wait ran out: its result is as good.
            stored = _usable(userid, await self._vault.load(userid))
            if self._still_good(stored, rejected):
                return stored.tokens.access_token
            raise

    async def store_initial(self, tokens: TokenSet) -> int:
        """Keep the tokens of a new consent (OAuth callback): create or replace, clear re-auth."""
        # Unconditional: a new consent supersedes whatever is stored, and bumping the version
        # makes any refresh still in flight lose its CAS instead of overwriting these tokens.
        version = await self._vault.save(tokens, expected_version=None)
        log.info("stored withings tokens of a new consent for user %s", tokens.userid)
        return version

    async def _refresh_under_lock(self, userid: str, rejected: str | None) -> str:
        for _ in range(MAX_ATTEMPTS):
            # Re-read after acquiring: the previous holder has probably refreshed already.
            stored = _usable(userid, await self._vault.load(userid))
            if self._still_good(stored, rejected):
                return stored.tokens.access_token
            try:
                rotated = await self._endpoint.refresh(stored.tokens.refresh_token)
            except WithingsInvalidGrant as refused:
                try:
                    # CAS on the version we refreshed from: if a holder whose lease ran out
                    # rotated the tokens meanwhile, ours was merely superseded; use theirs.
                    await self._vault.mark_needs_reauth(
                        userid, "invalid_grant", expected_version=stored.version
                    )
                except VersionConflict:
                    continue
                raise NeedsReauth(userid, "invalid_grant") from refused
            if rotated.userid != userid:
                raise WithingsError(f"token refresh for user {userid} answered for another user")
            try:
                # Persist before use: once the new access token is used, Withings kills the old
                # refresh token, and an unsaved new pair would strand the user.
                version = await self._vault.save(rotated, expected_version=stored.version)
            except VersionConflict:
                continue  # someone else saved a newer pair first: discard ours, re-read theirs
            log.info("refreshed withings tokens for user %s (version %d)", userid, version)
            return rotated.access_token
        raise VersionConflict(f"withings tokens of user {userid} kept changing during refresh")

    def _fresh(self, stored: StoredTokens) -> bool:
        return stored.tokens.expires_at - self._refresh_margin > self._clock()

    def _still_good(self, stored: StoredTokens, rejected: str | None) -> bool:
        """Fresh, and not the token Withings just refused."""
        return self._fresh(stored) and stored.tokens.access_token != rejected


def _usable(userid: str, stored: StoredTokens | None) -> StoredTokens:
    if stored is None:
        raise NeedsReauth(userid, "not connected")
    if stored.status == "needs_reauth":
        raise NeedsReauth(userid, stored.needs_reauth_reason or "needs_reauth")
    return stored
