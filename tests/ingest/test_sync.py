"""SyncService against the sandbox: paging, resumable cursors, what is skipped, windows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fhir_gateway.errors import WithingsTransient
from fhir_gateway.ingest.cursors import CURSORS_KIND
from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.withings import identity
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
