"""The Withings connection end to end: consent → callback → sync → FHIR API, on the sandbox.

Every step goes through the real app (routes, services, SQLite store, Withings client) and the
Withings simulator over httpx transports; only the clock is shared and driven by the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fhir_gateway import cli
from fhir_gateway.jobs.coalesce import SyncWindow
from fhir_gateway.withings import identity
from fhir_gateway.withings.sandbox_state import ACCESS_TOKEN_SECONDS
from tests.ingest.harness import Harness, running_gateway, unseeded_user, weight_group

WEIGHT = "http://loinc.org|29463-7"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path) as harness:
        yield harness


def expected_weights(groups: Any) -> int:
    """Weight measures Withings holds that are the patient's: real (category 1), not ambiguous."""
    return sum(
        1
        for group in groups
        if group["category"] == 1 and group["attrib"] != 1
        for measure in {(m["type"], m.get("position")) for m in group["measures"]}
        if measure[0] == 1
    )


async def test_connect_sync_and_find_the_observations(gateway: Harness) -> None:
    approved = await gateway.authorize()
    page = await gateway.http.get(approved.headers["location"])
    assert page.status_code == 200
    userid = next(iter(gateway.sandbox.users))
    patient = identity.patient_id(userid)
    assert f"Patient/{patient}" in page.text and "/Observation?patient=" in page.text
    assert not any(token in page.text for token in gateway.recorder.tokens)
    await gateway.services.settle()

    groups = list(gateway.sandbox.users[userid].measure_groups.values())
    weights = expected_weights(groups)
    assert weights > 100  # the real capture: BPM Connect + Body Cardio + manual entries
    assert await gateway.total(patient=patient, code=WEIGHT) == weights

    stored_patient = await gateway.fhir(f"/Patient/{patient}")
    assert stored_patient["identifier"] == [
        {"system": identity.USER_IDENTIFIER_SYSTEM, "value": userid}
    ]
    # Activity days and sleep nights arrived too.
    assert await gateway.total(patient=patient, code="http://loinc.org|41950-7") > 0
    assert await gateway.total(patient=patient, code="http://loinc.org|93832-4") > 0

    # The workflow alias answers exactly what the FHIR search answers.
    query = {"patient": patient, "code": WEIGHT, "_count": "5", "_sort": "-date"}
    alias = await gateway.http.get(
        "/workflows/withings/observations", params=query, headers=gateway.admin()
    )
    direct = await gateway.http.get("/Observation", params=query, headers=gateway.admin())
    assert alias.status_code == 200
    assert [e["resource"]["id"] for e in alias.json()["entry"]] == [
        e["resource"]["id"] for e in direct.json()["entry"]
    ]


async def test_resync_is_idempotent_and_a_changed_group_is_a_new_version(
    gateway: Harness,
) -> None:
    taken = int(gateway.clock()) - 86_400
    userid = unseeded_user(
        gateway.sandbox,
        [weight_group(80_000, taken, grpid=7001), weight_group(80_500, taken + 3600, grpid=7002)],
    )
    await gateway.connect(userid)
    observation = f"/Observation/{identity.measure_observation_id(7001, 1, None)}"
    assert (await gateway.fhir(observation))["valueQuantity"]["value"] == 80

    again = await gateway.http.post("/workflows/withings/sync", headers=gateway.admin())
    assert again.status_code == 200
    (report,) = [u for u in again.json()["users"] if u["userid"] == userid]
    assert report["created"] == 0 and report["updated"] == 0
    assert (await gateway.fhir(f"{observation}/_history"))["total"] == 1

    gateway.clock.advance(60)
    gateway.sandbox.change_measure_group(
        userid, 7001, measures=[{"value": 79_200, "type": 1, "unit": -3}]
    )
    changed = await gateway.http.post(
        "/workflows/withings/sync", params={"userid": userid}, headers=gateway.admin()
    )
    assert changed.json()["users"][0]["updated"] == 1
    current = await gateway.fhir(observation)
    assert current["valueQuantity"]["value"] == 79.2 and current["meta"]["versionId"] == "2"
    assert (await gateway.fhir(f"{observation}/_history"))["total"] == 2


async def test_a_deleted_group_is_gone_after_its_window_is_fetched_again(gateway: Harness) -> None:
    taken = int(gateway.clock()) - 10 * 86_400
    userid = unseeded_user(
        gateway.sandbox,
        [weight_group(70_000, taken, grpid=8001), weight_group(70_100, taken + 600, grpid=8002)],
    )
    await gateway.connect(userid)
    deleted = f"/Observation/{identity.measure_observation_id(8001, 1, None)}"
    kept = f"/Observation/{identity.measure_observation_id(8002, 1, None)}"

    gateway.sandbox.delete_measure_group(userid, 8001)
    # getmeas has no tombstones: an incremental sync cannot see the deletion …
    await gateway.services.sync.sync_user(userid, ())
    assert (await gateway.http.get(deleted, headers=gateway.admin())).status_code == 200
    # … the notified window re-fetch does.
    await gateway.services.sync.sync_user(userid, [SyncWindow(1, taken - 60, taken + 60)])
    gone = await gateway.http.get(deleted, headers=gateway.admin())
    assert gone.status_code == 410
    assert (await gateway.http.get(kept, headers=gateway.admin())).status_code == 200
    assert (await gateway.fhir(f"{deleted}/_history"))["total"] == 2  # history kept


async def test_fifty_concurrent_syncs_with_an_expired_token_make_one_token_call(
    gateway: Harness,
) -> None:
    userid = unseeded_user(gateway.sandbox, [weight_group(65_000, int(gateway.clock()) - 600)])
    await gateway.connect(userid)
    gateway.clock.advance(ACCESS_TOKEN_SECONDS + 1)  # expired on both sides
    before = gateway.sandbox.calls["requesttoken"]

    reports = await asyncio.gather(*(gateway.services.sync.sync(userid) for _ in range(50)))

    assert gateway.sandbox.calls["requesttoken"] - before == 1
    assert all(report.outcome == "ok" for report in reports)


async def test_a_rotated_token_survives_a_crash_before_it_was_stored(gateway: Harness) -> None:
    userid = unseeded_user(gateway.sandbox, [weight_group(65_000, int(gateway.clock()) - 600)])
    await gateway.connect(userid)
    gateway.clock.advance(ACCESS_TOKEN_SECONDS + 1)
    stored = await gateway.services.vault.load(userid)
    assert stored is not None
    # The token response arrives, then the process dies before the vault write: Withings has
    # rotated, we still hold the previous refresh token.
    await gateway.services.withings.refresh(stored.tokens.refresh_token)
    gateway.clock.advance(60)  # the restart; also past the 10 s same-arguments rule

    report = await gateway.services.sync.sync(userid)

    assert report.outcome == "ok"
    after = await gateway.services.vault.load(userid)
    assert after is not None and after.status == "active" and after.version > stored.version


async def test_no_token_or_code_value_reaches_the_logs(
    gateway: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    userid = unseeded_user(gateway.sandbox, [weight_group(65_000, int(gateway.clock()) - 600)])
    await gateway.connect(userid)
    gateway.clock.advance(ACCESS_TOKEN_SECONDS + 1)
    await gateway.http.post("/workflows/withings/sync", headers=gateway.admin())
    gateway.sandbox.revoke_user_tokens(userid)
    gateway.clock.advance(ACCESS_TOKEN_SECONDS + 1)
    await gateway.http.post("/workflows/withings/sync", headers=gateway.admin())

    assert len(gateway.recorder.tokens) >= 4  # the consent pair and one rotation
    for record in caplog.records:
        text = f"{record.getMessage()} {record.exc_text or ''}"
        assert not any(token in text for token in gateway.recorder.tokens), record.name
        if record.name.startswith("fhir_gateway"):
            assert not any(code in text for code in gateway.codes), record.name


async def test_a_revoked_refresh_token_shows_as_needs_reauth_in_users(
    gateway: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    userid = unseeded_user(gateway.sandbox, [weight_group(65_000, int(gateway.clock()) - 600)])
    await gateway.connect(userid)
    gateway.sandbox.revoke_user_tokens(userid)
    gateway.clock.advance(ACCESS_TOKEN_SECONDS + 1)

    response = await gateway.http.post("/workflows/withings/sync", headers=gateway.admin())
    assert response.json()["needs_reauth"] == [userid]
    # Flagged users are skipped from then on: no more calls to Withings for them.
    calls = sum(gateway.sandbox.calls.values())
    skipped = await gateway.http.post("/workflows/withings/sync", headers=gateway.admin())
    assert skipped.json()["users"] == [] and sum(gateway.sandbox.calls.values()) == calls

    for name, value in {
        "DATA_DIR": str(gateway.settings.data_dir),
        "ENCRYPTION_KEY": gateway.settings.encryption_key or "",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("MONGODB_URL", "REDIS_URL", "SANDBOX"):
        monkeypatch.delenv(name, raising=False)
    assert "DATA_DIR" in os.environ
    # The CLI runs its own event loop, as it does from a shell.
    assert await asyncio.to_thread(cli.main, ["users"]) == 0
    output = capsys.readouterr().out
    (line,) = [line for line in output.splitlines() if line.startswith(userid)]
    assert "needs_reauth (invalid_grant)" in line
    assert not any(token in output for token in gateway.recorder.tokens)


async def test_a_notification_about_a_deletion_reaches_the_fhir_api(gateway: Harness) -> None:
    taken = int(gateway.clock()) - 3 * 86_400
    userid = unseeded_user(gateway.sandbox, [weight_group(71_000, taken, grpid=8101)])
    await gateway.connect(userid)  # subscriptions run in the background; settle() awaited them
    subscribed = sorted(s.appli for s in gateway.sandbox.subscriptions if s.userid == userid)
    assert subscribed == [1, 2, 4, 16, 44, 46, 54]
    observation = f"/Observation/{identity.measure_observation_id(8101, 1, None)}"
    assert (await gateway.http.get(observation, headers=gateway.admin())).status_code == 200

    gateway.sandbox.delete_measure_group(userid, 8101)
    # Withings POSTs the notification to the subscribed callback (§5.4) …
    statuses = await gateway.sandbox.notify(userid, 1, taken - 60, taken + 60, gateway.http)
    assert statuses == [200]
    # … the webhook records it, the queue runs the user's sync with that window.
    await gateway.services.settle()
    assert (await gateway.http.get(observation, headers=gateway.admin())).status_code == 410
