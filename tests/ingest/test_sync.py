"""SyncService against the sandbox: paging, resumable cursors, what is skipped, windows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fhir_gateway.errors import WithingsAuthError, WithingsTransient
from fhir_gateway.ingest.cursors import CURSORS_KIND
from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.withings import identity
from fhir_gateway.withings.tokens import NeedsReauth
from tests.ingest.harness import Harness, running_gateway, unseeded_user, weight_group


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path, measure_page_size=2) as harness:
        yield harness


def getmeas_offset(request: httpx.Request) -> int | None:
    """The offset of a getmeas request, or None for any other request."""
    form = dict(httpx.QueryParams(request.content.decode()))
    if form.get("action") != "getmeas":
        return None
    return int(form.get("offset", "0"))


async def test_a_failed_page_resumes_after_the_last_stored_page(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    taken = int(gateway.clock()) - 86_400
    for i in range(7):
        gateway.sandbox.add_measure_group(userid, weight_group(60_000 + i, taken, grpid=9000 + i))
    patient = identity.patient_id(userid)

    # Pages of 2: the network fails for the third page (offset 4), every retry included.
    gateway.recorder.fail_when = lambda request: getmeas_offset(request) == 4
    with pytest.raises(WithingsTransient):
        await gateway.services.sync.sync(userid)
    cursor = await gateway.store.get_record(CURSORS_KIND, f"{userid}:measures")
    assert cursor is not None
    # Nothing was stored before: the sweep runs from 0, and has seen groups modified at `taken`.
    assert cursor.data == {
        "lastupdate": 0,
        "sweep": {"from": 0, "offset": 4, "max_modified": taken},
    }
    assert await gateway.total(patient=patient) == 4

    asked: list[int | None] = []
    gateway.recorder.fail_when = lambda request: bool(asked.append(getmeas_offset(request)))
    report = await gateway.services.sync.sync(userid)
    assert [offset for offset in asked if offset is not None] == [4, 6]  # not from the start
    assert report.created == 3
    assert await gateway.total(patient=patient) == 7
    cursor = await gateway.store.get_record(CURSORS_KIND, f"{userid}:measures")
    assert cursor is not None and cursor.data == {"lastupdate": taken, "sweep": None}


async def test_ambiguous_goal_and_unknown_rows_are_counted(gateway: Harness) -> None:
    taken = int(gateway.clock()) - 3600
    ambiguous = {**weight_group(90_000, taken, grpid=501), "attrib": 1}
    goal = {**weight_group(70_000, taken, grpid=502), "category": 2}
    unknown = {
        **weight_group(1, taken, grpid=503),
        "measures": [{"value": 5, "type": 9999, "unit": 0}],
    }
    userid = unseeded_user(gateway.sandbox, [ambiguous, goal, unknown])
    await gateway.connect(userid)
    gateway.clock.advance(5)
    gateway.sandbox.change_measure_group(userid, 501)
    gateway.sandbox.change_measure_group(userid, 503)

    report = await gateway.services.sync.sync(userid)

    assert report.skipped["ambiguous"] == 1  # goals are not even asked for (category=1)
    assert report.unknown_types == {9999}
    stored = await gateway.fhir(f"/Observation/{identity.measure_observation_id(503, 9999, None)}")
    # Unknown future types are stored with the Withings code only.
    codings = [(coding["system"], coding["code"]) for coding in stored["code"]["coding"]]
    assert codings == [(identity.WITHINGS_MEASTYPE_SYSTEM, "9999")]
    missing = await gateway.http.get(
        f"/Observation/{identity.measure_observation_id(501, 1, None)}", headers=gateway.admin()
    )
    assert missing.status_code == 404


async def test_an_activity_window_refetches_the_changed_day(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    gateway.sandbox.put_activity(userid, {"date": "2026-01-05", "steps": 4000})
    await gateway.connect(userid)
    steps_id = identity.activity_observation_id(userid, "2026-01-05", "steps")
    assert (await gateway.fhir(f"/Observation/{steps_id}"))["valueQuantity"]["value"] == 4000

    gateway.clock.advance(60)
    gateway.sandbox.put_activity(userid, {"date": "2026-01-05", "steps": 9000})
    noon = 1_767_614_400  # 2026-01-05T12:00:00Z
    await gateway.services.sync.sync_user(userid, [SyncWindow(16, noon, noon + 3600)])

    current = await gateway.fhir(f"/Observation/{steps_id}")
    assert current["valueQuantity"]["value"] == 9000 and current["meta"]["versionId"] == "2"


async def _new_weight(gateway: Harness, userid: str, grpid: int) -> str:
    gateway.clock.advance(60)
    taken = int(gateway.clock())
    gateway.sandbox.add_measure_group(userid, weight_group(71_000, taken, grpid=grpid))
    return identity.measure_observation_id(grpid, 1, None)


@pytest.mark.parametrize("how", ["revoked", "refused once"])
async def test_a_token_refused_before_its_expiry_is_refreshed_and_the_call_retried(
    gateway: Harness, how: str
) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    observation_id = await _new_weight(gateway, userid, 7001)
    if how == "revoked":
        gateway.sandbox.revoke_access_tokens(userid)
    else:
        gateway.sandbox.fail_next("getmeas", 401)
    token_calls = gateway.sandbox.calls["requesttoken"]

    report = await gateway.services.sync.sync(userid)

    assert gateway.sandbox.calls["requesttoken"] == token_calls + 1  # one refresh
    assert report.created >= 1
    assert (await gateway.fhir(f"/Observation/{observation_id}"))["valueQuantity"]["value"] == 71
    stored = await gateway.services.vault.load(userid)
    assert stored is not None and stored.status == "active"


async def test_a_token_refused_twice_fails_the_sync_for_the_job_to_retry(
    gateway: Harness,
) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    gateway.sandbox.fail_next("getmeas", 401, times=2)
    with pytest.raises(WithingsAuthError):
        await gateway.services.sync.sync(userid)
    stored = await gateway.services.vault.load(userid)
    assert stored is not None and stored.status == "active"  # transient: never re-auth


async def test_revoked_consent_marks_the_user_for_reauth_and_stops_syncing(
    gateway: Harness,
) -> None:
    userid = unseeded_user(gateway.sandbox, [])
    await gateway.connect(userid)
    gateway.sandbox.revoke_user_tokens(userid)  # access and refresh tokens die
    with pytest.raises(NeedsReauth, match="invalid_grant"):
        await gateway.services.sync.sync(userid)
    assert userid not in await gateway.services.sync.connected_users()
    getmeas_calls = gateway.sandbox.calls["getmeas"]
    with pytest.raises(NeedsReauth):
        await gateway.services.sync.sync(userid)
    assert gateway.sandbox.calls["getmeas"] == getmeas_calls


async def test_sync_lag_measures_new_rows_past_the_cursor_only(gateway: Harness) -> None:
    def lag() -> float:
        return gateway.services.metrics.value("fhir_gateway_sync_lag_seconds")

    taken = int(gateway.clock()) - 30 * 86_400
    userid = unseeded_user(gateway.sandbox, [weight_group(70_000, taken, grpid=8001)])
    await gateway.connect(userid)
    assert lag() == 0.0  # a first backfill's old rows are history, not lag

    await _new_weight(gateway, userid, 8002)  # modified = now at Withings
    gateway.clock.advance(90)  # the notification and the queue took 90 s
    await gateway.services.sync.sync(userid)
    assert lag() == 90.0

    gateway.clock.advance(600)
    await gateway.services.sync.sync(userid)  # nothing new: the gauge keeps the last lag
    assert lag() == 90.0


async def test_a_row_modified_in_the_same_second_as_the_cursor_is_not_missed(
    gateway: Harness,
) -> None:
    taken = int(gateway.clock())
    userid = unseeded_user(gateway.sandbox, [weight_group(70_000, taken, grpid=8101)])
    await gateway.connect(userid)  # the cursor is now `taken`, the second the clock still shows
    late = gateway.sandbox.add_measure_group(userid, weight_group(70_500, taken, grpid=8102))
    assert gateway.sandbox.user(userid).measure_groups[late]["modified"] == taken

    await gateway.services.sync.sync(userid)  # incremental only: no window names the group

    observation_id = identity.measure_observation_id(8102, 1, None)
    assert (await gateway.fhir(f"/Observation/{observation_id}"))["valueQuantity"]["value"] == 70.5
