"""What `fhir-gateway keys|users|sync|jobs` do; the CLI only parses arguments and prints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from fhir_gateway.config import Settings
from fhir_gateway.ingest.cursors import CursorStore
from fhir_gateway.ingest.reports import ProgressCallback, SyncReport
from fhir_gateway.jobs.inbox import pending_count
from fhir_gateway.jobs.queue import describe_dead_letter, list_dead_letters
from fhir_gateway.services import ServiceOverrides, open_services
from fhir_gateway.store.base import Store
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings import keys
from fhir_gateway.withings.vault import TokenVault


@dataclass(frozen=True, slots=True)
class UserRow:
    """A connected Withings user as `fhir-gateway users` shows it: no secret, nothing decrypted."""

    userid: str
    status: str
    needs_reauth_reason: str | None
    token_expires_at: float
    scope: str
    measures_lastupdate: int | None


@dataclass(frozen=True, slots=True)
class JobsReport:
    """`fhir-gateway jobs`: jobs given up on (one line each) and notifications not yet queued."""

    dead_letters: list[str]
    inbox_pending: int


def generate_key() -> str:
    return keys.generate_key()


@asynccontextmanager
async def _opened_store(settings: Settings, store: Store | None) -> AsyncIterator[Store]:
    if store is not None:
        yield store
        return
    owned = make_store(settings)
    await owned.open()
    try:
        yield owned
    finally:
        await owned.close()


async def rotate_keys(settings: Settings, *, store: Store | None = None) -> int:
    """Re-encrypt every stored Withings token under the first ENCRYPTION_KEY; how many."""
    async with _opened_store(settings, store) as opened:
        return await TokenVault(opened, keys.load_keys(settings)).rotate_keys()


async def list_users(settings: Settings, *, store: Store | None = None) -> list[UserRow]:
    """Every stored Withings user with status (needs_reauth included) and token expiry."""
    async with _opened_store(settings, store) as opened:
        vault = TokenVault(opened, keys.load_keys(settings))
        cursors = CursorStore(opened)
        rows = []
        for user in await vault.list_users():
            lastupdates = await cursors.lastupdates(user.userid)
            rows.append(
                UserRow(
                    userid=user.userid,
                    status=user.status,
                    needs_reauth_reason=user.needs_reauth_reason,
                    token_expires_at=user.expires_at,
                    scope=user.scope,
                    measures_lastupdate=lastupdates["measures"],
                )
            )
        return rows


async def sync(
    settings: Settings,
    *,
    userid: str | None = None,
    progress: ProgressCallback | None = None,
    store: Store | None = None,
    withings_transport: httpx.AsyncBaseTransport | None = None,
    overrides: ServiceOverrides | None = None,
) -> SyncReport:
    """An incremental sync of every connected user, or of `userid`, in this process."""
    async with open_services(
        settings,
        store=store,
        close_store=store is None,
        withings_transport=withings_transport,
        overrides=overrides,
    ) as services:
        return await services.sync.sync_all(None if userid is None else [userid], progress=progress)


async def jobs_report(settings: Settings, *, store: Store | None = None) -> JobsReport:
    """Dead letters (newest failure last) and the inbox backlog, read from the store."""
    async with _opened_store(settings, store) as opened:
        records = await list_dead_letters(opened)
        records.sort(key=lambda record: float(record.data.get("last_failed_at", 0.0)))
        return JobsReport(
            dead_letters=[describe_dead_letter(record) for record in records],
            inbox_pending=await pending_count(opened),
        )
