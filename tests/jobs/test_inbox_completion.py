"""A sync removes from the inbox only the notifications whose window it re-fetched."""

from __future__ import annotations

import pytest

from fhir_gateway.jobs.coalesce import SyncWindow, covers
from fhir_gateway.jobs.inbox import (
    INBOX_KIND,
    Notification,
    complete_user_inbox,
    record_notification,
)
from fhir_gateway.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("served", "window", "covered"),
    [
        ([], SyncWindow(1, None, None), True),  # every sync runs the incremental sweep
        ([SyncWindow(1, 10, 50)], SyncWindow(1, 20, 30), True),
        ([SyncWindow(1, 10, 50)], SyncWindow(1, 10, 50), True),
        ([SyncWindow(1, 10, 50)], SyncWindow(1, 5, 30), False),
        ([SyncWindow(1, 10, 50)], SyncWindow(4, 20, 30), False),
        ([SyncWindow(1, None, None)], SyncWindow(1, 20, 30), False),
        ([], SyncWindow(16, 20, 30), False),
    ],
)
def test_covers(served: list[SyncWindow], window: SyncWindow, covered: bool) -> None:
    assert covers(served, window) is covered


async def test_records_whose_window_was_not_refetched_stay_for_the_sweeper(
    store: SQLiteStore,
) -> None:
    served_one = Notification("7", 1, 1_000, 2_000)
    lost_one = Notification("7", 1, 90_000, 91_000)  # its window died with a Redis restart
    undated = Notification("7", 1)
    for notification in (served_one, lost_one, undated):
        await record_notification(store, notification, now=lambda: 100.0)
    later = Notification("7", 1, 1_500, 1_600)
    await record_notification(store, later, now=lambda: 300.0)

    oldest = await complete_user_inbox(store, "7", 200.0, [SyncWindow(1, 500, 2_500)])

    assert oldest == 100.0
    left = {Notification.from_record(r) for r in await store.list_records(INBOX_KIND)}
    assert left == {lost_one, later}
    # A user who must reconnect: everything received before the claim is done with.
    await complete_user_inbox(store, "7", 200.0)
    left = {Notification.from_record(r) for r in await store.list_records(INBOX_KIND)}
    assert left == {later}
