"""Appli 46 with action unlink/delete (withings-api §5.3): the account is gone at Withings, so the
user is flagged for re-consent at once and no sync runs for them any more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fhir_gateway.jobs.inbox import Notification
from tests.ingest.harness import Harness, running_gateway, unseeded_user, weight_group


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path) as harness:
        yield harness


@pytest.mark.parametrize("action", ["unlink", "delete"])
async def test_an_unlinked_account_needs_reauth_and_is_no_longer_synced(
    gateway: Harness, action: str
) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    services = gateway.services

    assert await services.on_notification(Notification(userid, 46, action=action)) == "unlinked"

    stored = await services.vault.load(userid)
    assert stored is not None
    assert (stored.status, stored.needs_reauth_reason) == ("needs_reauth", "unlinked")
    assert userid not in await services.sync.connected_users()
    # New data and its notification: no Withings call is made for this user any more.
    taken = int(gateway.clock())
    gateway.sandbox.add_measure_group(userid, weight_group(80_000, taken, grpid=4601))
    calls = sum(gateway.sandbox.calls.values())
    await services.on_notification(Notification(userid, 1, taken - 1, taken + 1))
    await services.settle()
    assert sum(gateway.sandbox.calls.values()) == calls


async def test_other_profile_changes_are_acknowledged_without_a_sync(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    calls = sum(gateway.sandbox.calls.values())
    outcome = await gateway.services.on_notification(Notification(userid, 46, action="update"))
    await gateway.services.settle()
    assert outcome == "ignored_appli"
    assert sum(gateway.sandbox.calls.values()) == calls
    stored = await gateway.services.vault.load(userid)
    assert stored is not None and stored.status == "active"
