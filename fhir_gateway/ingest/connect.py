"""Connecting a Withings account: the authorize redirect and the callback (withings-api.md §1).

The callback must be quick twice over: the code dies 30 s after consent (§1.2), so it is exchanged
before anything else; and a person is waiting on the page, so the notification subscriptions
(5 s apart, §2.3) run in the background and the initial backfill is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from fhir_gateway.errors import ConfigError, GatewayError, InvalidRequest
from fhir_gateway.fhir.validation import validate_resource
from fhir_gateway.ingest.background import BackgroundTasks
from fhir_gateway.ingest.subscriptions import Subscriptions
from fhir_gateway.store.base import Store
from fhir_gateway.withings import identity
from fhir_gateway.withings.client import WithingsClient
from fhir_gateway.withings.mapping import patient_resource
from fhir_gateway.withings.oauth_state import StateSigner
from fhir_gateway.withings.tokens import TokenManager

log = logging.getLogger(__name__)

# user.sleepevents is left out: bed in/out events are not data we turn into FHIR (§1.2).
REQUESTED_SCOPE = "user.info,user.metrics,user.activity"
CALLBACK_PATH = "/auth/withings/callback"
STATE_TTL_SECONDS = 600.0

# Queues (or runs) the first sync of a newly connected user.
Backfill = Callable[[str], Awaitable[object]]


class ConsentRefused(InvalidRequest):
    """The person declined at Withings, or Withings sent the browser back with an error."""


@dataclass(frozen=True, slots=True)
class Connection:
    """A Withings account just linked: its userid (a string, §1.3) and its Patient."""

    userid: str
    patient_id: str
    scope: str


def redirect_uri(base_url: str) -> str:
    return base_url.rstrip("/") + CALLBACK_PATH


class ConnectFlow:
    """`GET /auth/withings` and its callback, minus the HTTP."""

    def __init__(
        self,
        *,
        store: Store,
        client: WithingsClient,
        tokens: TokenManager,
        signer: StateSigner,
        subscriptions: Subscriptions,
        tasks: BackgroundTasks,
        backfill: Backfill,
        base_url: str,
        authorize_url: str,
        client_id: str | None,
    ) -> None:
        self._store = store
        self._client = client
        self._tokens = tokens
        self._signer = signer
        self._subscriptions = subscriptions
        self._tasks = tasks
        self._backfill = backfill
        self._redirect_uri = redirect_uri(base_url)
        self._authorize_url = authorize_url
        self._client_id = client_id

    def __repr__(self) -> str:
        return f"ConnectFlow(redirect_uri={self._redirect_uri!r})"

    def authorize_redirect(self) -> str:
        """The Withings authorize URL with a fresh signed, expiring, single-use state (§1.2)."""
        if not self._client_id:
            raise ConfigError(["WITHINGS_CLIENT_ID and WITHINGS_CLIENT_SECRET are not set"])
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._client_id,
                "redirect_uri": self._redirect_uri,
                "scope": REQUESTED_SCOPE,
                "state": self._signer.issue(ttl=STATE_TTL_SECONDS),
            }
        )
        separator = "&" if "?" in self._authorize_url else "?"
        return f"{self._authorize_url}{separator}{query}"

    async def complete(
        self, *, code: str | None, state: str | None, error: str | None
    ) -> Connection:
        """The callback: verify state, exchange the code, keep the tokens, make the Patient.

        Then subscribe to notifications in the background and queue the initial backfill.
        """
        if not state:
            raise InvalidRequest("the callback has no state parameter")
        await self._signer.consume(state)  # InvalidState: forged, expired or replayed
        if error:
            # RFC 6749 §4.1.2.1: access_denied when the person clicked Deny.
            raise ConsentRefused(f"Withings did not grant access ({error[:40]})")
        if not code:
            raise InvalidRequest("the callback has no code parameter")
        tokens = await self._client.exchange_code(code, self._redirect_uri)
        await self._tokens.store_initial(tokens)
        patient = patient_resource(tokens.userid)
        validate_resource(patient)
        await self._store.upsert([patient])
        connection = Connection(tokens.userid, identity.patient_id(tokens.userid), tokens.scope)
        log.info(
            "withings user %s connected as Patient/%s (scope %s)",
            connection.userid,
            connection.patient_id,
            connection.scope,
        )
        # A person waits on the page: subscribing takes 5 s per appli, the backfill minutes.
        self._tasks.start(
            f"withings-subscribe:{tokens.userid}",
            self._subscriptions.subscribe(tokens.userid, tokens.scope),
        )
        try:
            await self._backfill(tokens.userid)
        except GatewayError as failure:
            # The account is linked all the same; the periodic reconciliation backfills it.
            log.warning("initial backfill of user %s not queued: %s", tokens.userid, failure)
        return connection
