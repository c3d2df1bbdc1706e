"""The Withings simulator's memory: apps, users and their data, codes, rotating tokens, faults.

Rules copied from withings-api.md: codes live 30 s and are single-use (§1.2); access tokens 3 h,
refresh tokens rotate and the old one survives 8 h or until the new access token is first used
(§1.4); the same token request within 10 s is a 601 (§1.3); getmeas has no tombstones (§8.6).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from importlib.resources import files
from typing import Any

import httpx

ACCESS_TOKEN_SECONDS = 3 * 3600
REFRESH_TOKEN_SECONDS = 365 * 86400
ROTATION_GRACE_SECONDS = 8 * 3600
CODE_SECONDS = 30
SAME_ARGUMENTS_SECONDS = 10
NEVER_EXPIRES = 2147483647  # what `notify list` reports as `expires` (AIO notify_list.json)
SCOPES = frozenset({"user.info", "user.metrics", "user.activity", "user.sleepevents"})
GRPID_STRIDE = 10_000_000_000  # real grpids are < 10^10: user n's copy of grpid g is n*stride+g
# Verbatim from a real capture (§1.5).
INVALID_TOKEN_TEXT = "XRequestID: Not provided invalid_token: The access token provided is invalid"


class SandboxError(Exception):
    """A non-zero status the sandbox answers in the envelope instead of a body."""

    def __init__(self, status: int, error: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {error}")
        self.status = status
        self.error = error
        self.body = body


def invalid_params(what: str = "") -> SandboxError:
    return SandboxError(503, f"Invalid Params: {what}" if what else "Invalid Params")


@dataclass(slots=True)
class RegisteredClient:
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]


@dataclass(slots=True)
class SandboxUser:
    userid: str
    serial: int
    timezone: str = "Europe/Amsterdam"
    measure_groups: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    activities: list[dict[str, Any]] = field(default_factory=list, repr=False)
    sleep_summaries: list[dict[str, Any]] = field(default_factory=list, repr=False)
    devices: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass(slots=True)
class Subscription:
    client_id: str
    userid: str
    appli: int
    callbackurl: str
    comment: str
    expires: int = NEVER_EXPIRES


@dataclass(slots=True)
class Fault:
    status: int
    remaining: int
    wait_seconds: float | None


# Token records are keyed by the token value in private dicts, so no repr ever shows one.
@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    scope: str
    userid: str
    issued_at: float


@dataclass(slots=True)
class _AccessToken:
    client_id: str
    userid: str
    scope: str
    expires_at: float
    predecessor_refresh: str | None = field(default=None, repr=False)
    used: bool = False


@dataclass(slots=True)
class _RefreshToken:
    client_id: str
    userid: str
    scope: str
    expires_at: float


@cache
def _fixture_text(name: str) -> str:
    return (files("fhir_gateway.withings") / "sandbox_data" / name).read_text(encoding="utf-8")


def _fixture(name: str) -> Any:
    """A fresh copy of a shipped real capture (parsed per call so users never share objects)."""
    return json.loads(_fixture_text(name))


def _day_shift(newest: float, now: float) -> int:
    """Whole days to add so that `newest` lands within the last day before `now`."""
    return math.floor((now - newest) / 86400)


def _shift_ymd(ymd: str, days: int) -> str:
    return (date.fromisoformat(ymd) + timedelta(days=days)).isoformat()


class SandboxState:
    """Everything the simulator knows; tests drive it directly and through its HTTP face."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        probe_client: httpx.AsyncClient | None = None,
        measure_page_size: int = 200,
        series_page_size: int = 300,
    ) -> None:
        self.clock = clock
        self.probe_client = probe_client  # used for the HEAD probe of `notify subscribe`
        self.measure_page_size = measure_page_size
        self.series_page_size = series_page_size
        self.calls: Counter[str] = Counter()  # requests per `action`, failed ones included
        self.clients: dict[str, RegisteredClient] = {}
        self.users: dict[str, SandboxUser] = {}
        self.subscriptions: list[Subscription] = []
        self._faults: dict[str, list[Fault]] = {}
        self._codes: dict[str, _Code] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._recent_token_requests: dict[tuple[tuple[str, str], ...], float] = {}

    def __repr__(self) -> str:
        return f"SandboxState(clients={len(self.clients)}, users={len(self.users)})"

    def now(self) -> int:
        return int(self.clock())

    # -- apps, users, seeded data -----------------------------------------------------------

    def register_client(
        self, client_id: str, client_secret: str, redirect_uris: Iterable[str]
    ) -> RegisteredClient:
        client = RegisteredClient(client_id, client_secret, tuple(redirect_uris))
        self.clients[client_id] = client
        return client

    def add_user(self, userid: str | None = None, *, seed: bool = True) -> str:
        """A new user; `seed` copies the shipped real captures, shifted so the newest is recent."""
        serial = len(self.users) + 1
        userid = userid or str(10_000_000 + serial)
        if userid in self.users:
            raise ValueError(f"user {userid} exists")
        user = SandboxUser(userid=userid, serial=serial)
        self.users[userid] = user
        if seed:
            self._seed(user)
        return userid

    def user(self, userid: str) -> SandboxUser:
        try:
            return self.users[userid]
        except KeyError:
            raise ValueError(f"no sandbox user {userid}") from None

    def _seed(self, user: SandboxUser) -> None:
        now = self.clock()
        groups = _fixture("measurement_list.json") + _fixture("measurement_list_2.json")
        # One shift for both captures keeps their real spacing; whole days keep local times.
        days = _day_shift(max(g["modified"] for g in groups), now)
        for group in groups:
            for key in ("date", "created", "modified"):
                group[key] += days * 86400
            group["grpid"] += user.serial * GRPID_STRIDE
            user.measure_groups[group["grpid"]] = group

        activities = _fixture("activity.json")["body"]["activities"]
        days = _day_shift(max(row["modified"] for row in activities), now)
        for row in activities:
            row["date"] = _shift_ymd(row["date"], days)
            row["modified"] += days * 86400
        user.activities = activities

        nights = _fixture("sleep_summary.json")["body"]["series"]
        days = _day_shift(max(night["modified"] for night in nights), now)
        for night in nights:
            night["date"] = _shift_ymd(night["date"], days)
            for key in ("startdate", "enddate", "created", "modified"):
                night[key] += days * 86400
            night["id"] += user.serial * GRPID_STRIDE
        user.sleep_summaries = nights
        user.devices = _fixture("device.json")["body"]["devices"]

    def add_measure_group(self, userid: str, group: Mapping[str, Any]) -> int:
        """Store a new group (defaults filled like a device upload); returns its grpid."""
        user = self.user(userid)
        now = self.now()
        grpid = int(group.get("grpid") or self._next_id(user.measure_groups))
        stored: dict[str, Any] = {
            "grpid": grpid, "attrib": 0, "date": now, "created": now, "modified": now,
            "category": 1, "deviceid": None, "hash_deviceid": None, "measures": [],
            "modelid": None, "model": None, "comment": None,
        }  # fmt: skip
        stored.update(group)
        stored["grpid"] = grpid
        user.measure_groups[grpid] = stored
        return grpid

    def change_measure_group(self, userid: str, grpid: int, **fields: Any) -> None:
        """Edit a group; Withings bumps `modified` on every create/update/delete (§3.2)."""
        group = self.user(userid).measure_groups[grpid]
        group.update(fields)
        group["modified"] = self.now()

    def delete_measure_group(self, userid: str, grpid: int) -> None:
        """Gone without a trace: getmeas has no tombstones (§8.6)."""
        del self.user(userid).measure_groups[grpid]

    def put_activity(self, userid: str, row: Mapping[str, Any]) -> None:
        """Create or replace the row of `row["date"]`; a day's row is updated all day (§4.1)."""
        user = self.user(userid)
        stored = {"timezone": user.timezone, "deviceid": None, "brand": 1, **row}
        stored["modified"] = self.now()
        user.activities = [r for r in user.activities if r["date"] != stored["date"]]
        user.activities.append(stored)

    def add_sleep_summary(self, userid: str, night: Mapping[str, Any]) -> int:
        user = self.user(userid)
        now = self.now()
        ids = {int(n["id"]): n for n in user.sleep_summaries}
        stored = {"id": self._next_id(ids), "timezone": user.timezone, "created": now, **night}
        stored["modified"] = now
        user.sleep_summaries.append(stored)
        return int(stored["id"])

    def _next_id(self, taken: Mapping[int, Any]) -> int:
        return max(taken, default=0) + 1

    # -- fault injection ----------------------------------------------------------------------

    def fail_next(
        self, action: str, status: int, *, times: int = 1, wait_seconds: float | None = None
    ) -> None:
        """The next `times` requests with this `action` answer `status` instead."""
        self._faults.setdefault(action, []).append(Fault(status, times, wait_seconds))

    def take_fault(self, action: str) -> Fault | None:
        queue = self._faults.get(action)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.pop(0)
        return fault

    # -- OAuth --------------------------------------------------------------------------------

    def check_authorize(self, client_id: str, redirect_uri: str, scope: str) -> RegisteredClient:
        """Validate an authorize request; raises ValueError with a reason fit for the page."""
        client = self.clients.get(client_id)
        if client is None:
            raise ValueError("unknown client_id")
        if redirect_uri not in client.redirect_uris:
            raise ValueError("redirect_uri is not a registered callback URL of this app")
        scopes = [s for s in scope.split(",") if s]
        if not scopes or not set(scopes) <= SCOPES:
            raise ValueError(f"scope must be a comma-separated subset of {sorted(SCOPES)}")
        return client

    def authorize(
        self, client_id: str, redirect_uri: str, scope: str, userid: str | None = None
    ) -> str:
        """The consent click: a fresh authorization code (a new demo user when `userid` is None)."""
        self.check_authorize(client_id, redirect_uri, scope)
        if userid is None:
            userid = self.add_user(seed=True)
        self.user(userid)
        code = secrets.token_hex(20)
        self._codes[code] = _Code(client_id, redirect_uri, scope, userid, self.clock())
        return code

    def request_token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """`POST /v2/oauth2 action=requesttoken`: the body of a successful answer, or raise."""
        now = self.clock()
        self._refuse_same_arguments(form, now)
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise invalid_params("invalid client_id")
        if not secrets.compare_digest(form.get("client_secret", ""), client.client_secret):
            raise invalid_params("invalid client_secret")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            code = self._codes.get(form.get("code", ""))
            if code is None or code.client_id != client.client_id:
                raise invalid_params("invalid code")
            if now - code.issued_at > CODE_SECONDS:
                del self._codes[form["code"]]
                raise invalid_params("invalid code")
            if form.get("redirect_uri") != code.redirect_uri:
                raise invalid_params("invalid redirect_uri")
            del self._codes[form["code"]]  # single use
            return self._issue(client.client_id, code.userid, code.scope, predecessor=None)
        if grant_type == "refresh_token":
            old_token = form.get("refresh_token", "")
            old = self._refresh_tokens.get(old_token)
            if old is None or old.client_id != client.client_id or now >= old.expires_at:
                self._refresh_tokens.pop(old_token, None)
                raise invalid_params("invalid refresh_token")
            # Rotation safety net (§1.4): the old token lives on for 8 h at most ...
            old.expires_at = min(old.expires_at, now + ROTATION_GRACE_SECONDS)
            # ... or until the new access token is first used (see authenticate()).
            return self._issue(client.client_id, old.userid, old.scope, predecessor=old_token)
        raise invalid_params("invalid grant_type")

    def _refuse_same_arguments(self, form: Mapping[str, str], now: float) -> None:
        key = tuple(sorted(form.items()))
        self._recent_token_requests = {
            k: t for k, t in self._recent_token_requests.items() if now - t < SAME_ARGUMENTS_SECONDS
        }
        previous = self._recent_token_requests.get(key)
        self._recent_token_requests[key] = now if previous is None else previous
        if previous is not None:
            wait = math.ceil(SAME_ARGUMENTS_SECONDS - (now - previous))
            raise SandboxError(
                601, "Same arguments in less than 10 seconds", {"wait_seconds": max(wait, 1)}
            )

    def _issue(
        self, client_id: str, userid: str, scope: str, predecessor: str | None
    ) -> dict[str, Any]:
        now = self.clock()
        access_token, refresh_token = secrets.token_hex(20), secrets.token_hex(20)
        self._access_tokens[access_token] = _AccessToken(
            client_id, userid, scope, now + ACCESS_TOKEN_SECONDS, predecessor
        )
        self._refresh_tokens[refresh_token] = _RefreshToken(
            client_id, userid, scope, now + REFRESH_TOKEN_SECONDS
        )
        return {
            "userid": int(userid) if userid.isdigit() else userid,  # an int, as in the SPEC
            "access_token": access_token,
            "refresh_token": refresh_token,
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": scope,
            "csrf_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
        }

    def authenticate(self, access_token: str, scope: str | None) -> tuple[str, str]:
        """(client_id, userid) behind a Bearer token; raises 401 like the real API (§1.5)."""
        record = self._access_tokens.get(access_token)
        if record is None or self.clock() >= record.expires_at:
            raise SandboxError(401, INVALID_TOKEN_TEXT, {})
        if not record.used:
            record.used = True
            if record.predecessor_refresh is not None:
                self._refresh_tokens.pop(record.predecessor_refresh, None)
        if scope is not None and scope not in record.scope.split(","):
            # The real status for a missing scope is undocumented; 214 is the
            # "not allowed to call this service" family (§2.2).
            raise SandboxError(214, "Unauthorized: this token lacks the scope " + scope)
        return record.client_id, record.userid

    def revoke_access_tokens(self, userid: str) -> None:
        """Access tokens die before their expiry; refresh tokens still work (a 401, then a
        successful refresh: what a client sees when Withings invalidates a token early)."""
        for token in [t for t, rec in self._access_tokens.items() if rec.userid == userid]:
            del self._access_tokens[token]

    def revoke_user_tokens(self, userid: str) -> None:
        """What `oauth2 action=revoke` does: tokens die and notifications stop (§1.4)."""
        for tokens in (self._access_tokens, self._refresh_tokens):
            for token in [t for t, rec in tokens.items() if rec.userid == userid]:
                del tokens[token]
        self.subscriptions = [s for s in self.subscriptions if s.userid != userid]

    # -- notifications -------------------------------------------------------------------------

    async def subscribe(
        self, client_id: str, userid: str, callbackurl: str, appli: int, comment: str
    ) -> None:
        """Register after a successful HEAD probe of the callback URL; else status 293 (§5.2)."""
        if not callbackurl or len(callbackurl) > 255 or not await self._probe(callbackurl):
            raise SandboxError(293, "The callback URL is either unknown or invalid")
        for existing in self.subscriptions:
            if (existing.client_id, existing.userid, existing.appli, existing.callbackurl) == (
                client_id, userid, appli, callbackurl
            ):  # fmt: skip
                existing.comment = comment
                return
        self.subscriptions.append(Subscription(client_id, userid, appli, callbackurl, comment))

    async def _probe(self, url: str) -> bool:
        client = self.probe_client or httpx.AsyncClient(timeout=5)
        try:
            response = await client.head(url)
        except httpx.HTTPError:
            return False
        finally:
            if self.probe_client is None:
                await client.aclose()
        return 200 <= response.status_code < 300

    def subscriptions_of(
        self, client_id: str, userid: str, appli: int | None = None
    ) -> list[Subscription]:
        return [
            s
            for s in self.subscriptions
            if s.client_id == client_id
            and s.userid == userid
            and (appli is None or s.appli == appli)
        ]

    def revoke(self, client_id: str, userid: str, callbackurl: str, appli: int | None) -> None:
        """Drop matching subscriptions (all applis when `appli` is None)."""
        doomed = [
            s
            for s in self.subscriptions_of(client_id, userid, appli)
            if s.callbackurl == callbackurl
        ]
        if not doomed:
            # The real status is undocumented; 294 sits in the invalid-params family (§2.2).
            raise SandboxError(294, "Invalid Params: no such subscription")
        self.subscriptions = [s for s in self.subscriptions if s not in doomed]

    async def notify(
        self, userid: str, appli: int, startdate: int, enddate: int, client: httpx.AsyncClient
    ) -> list[int]:
        """POST the form Withings sends (§5.4) to every matching callback; their HTTP statuses."""
        form = {
            "userid": userid,
            "appli": str(appli),
            "startdate": str(startdate),
            "enddate": str(enddate),
        }
        statuses: list[int] = []
        for subscription in self.subscriptions:
            if subscription.userid == userid and subscription.appli == appli:
                response = await client.post(subscription.callbackurl, data=form)
                statuses.append(response.status_code)
        return statuses
