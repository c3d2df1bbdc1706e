"""Withings notification subscriptions per user: subscribe after consent, repair periodically.

Withings drops a subscription after repeated delivery failures (withings-api.md §5.5) and peers'
webhooks "randomly fail to work" after such churn (§8.2), so the periodic reconciliation lists
what is registered and re-subscribes what is missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from fhir_gateway.errors import WithingsError
from fhir_gateway.withings.client import WithingsClient
from fhir_gateway.withings.tokens import TokenManager
from fhir_gateway.withings.vault import TokenVault

log = logging.getLogger(__name__)

# Home Assistant's spacing: Withings HEAD-probes the callback on every subscribe and errors on
# calls too close together (§2.3).
SUBSCRIBE_SPACING_SECONDS = 5.0
# appli → the scope the user must have granted for it (§5.3). 54 is the ECG notification, whose
# intervals and AFib result (135-138, 130) arrive through getmeas. 46 is the user profile: its
# unlink/delete action tells us at once that the account is gone (services.on_notification).
NOTIFICATION_APPLIS: tuple[tuple[int, str], ...] = (
    (1, "user.metrics"),
    (2, "user.metrics"),
    (4, "user.metrics"),
    (16, "user.activity"),
    (44, "user.activity"),
    (46, "user.info"),
    (54, "user.metrics"),
)
COMMENT = "fhir-gateway"

# The callback URL with its secret path (the webhook owns it); None = no webhook endpoint.
WebhookUrl = Callable[[], Awaitable[str | None]]


def subscribed_applis(scope: str) -> list[int]:
    """The applis the granted `scope` allows: 'user.metrics' → [1, 2, 4, 54]."""
    granted = {part.strip() for part in scope.split(",")}
    return [appli for appli, needed in NOTIFICATION_APPLIS if needed in granted]


class Subscriptions:
    def __init__(
        self,
        client: WithingsClient,
        tokens: TokenManager,
        vault: TokenVault,
        webhook_url: WebhookUrl,
        *,
        spacing: float = SUBSCRIBE_SPACING_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._vault = vault
        self._webhook_url = webhook_url
        self._spacing = spacing
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"Subscriptions(spacing={self._spacing})"

    async def subscribe(self, userid: str, scope: str) -> list[int]:
        """Subscribe every appli the scope allows, spaced out; the applis that succeeded."""
        callback = await self._webhook_url()
        if callback is None:
            log.info("no webhook endpoint: withings user %s is kept current by polling", userid)
            return []
        return await self._subscribe(userid, callback, subscribed_applis(scope))

    async def repair(self, userid: str) -> list[int]:
        """Re-subscribe the applis Withings no longer lists for our callback; those fixed."""
        callback = await self._webhook_url()
        stored = await self._vault.load(userid)
        if callback is None or stored is None:
            return []
        access_token = await self._tokens.access_token(userid)
        registered = {
            int(profile["appli"])
            for profile in await self._client.list_subscriptions(access_token)
            if profile.get("callbackurl") == callback and isinstance(profile.get("appli"), int)
        }
        missing = [a for a in subscribed_applis(stored.tokens.scope) if a not in registered]
        if not missing:
            return []
        log.warning("withings user %s lost subscriptions %s; subscribing again", userid, missing)
        return await self._subscribe(userid, callback, missing)

    async def _subscribe(self, userid: str, callback: str, applis: Sequence[int]) -> list[int]:
        subscribed: list[int] = []
        for position, appli in enumerate(applis):
            if position:
                await self._sleep(self._spacing)
            # Asked per call: a backfill running meanwhile may have rotated the tokens.
            access_token = await self._tokens.access_token(userid)
            try:
                await self._client.subscribe(access_token, callback, appli, COMMENT)
            except WithingsError as failure:
                # 293 = the HEAD probe of the callback failed (§5.2). Polling still keeps the
                # user current, so one refused appli does not stop the others.
                log.warning(
                    "withings user %s: subscribing appli %d failed: %s", userid, appli, failure
                )
                continue
            subscribed.append(appli)
        log.info("withings user %s subscribed to applis %s", userid, subscribed)
        return subscribed
