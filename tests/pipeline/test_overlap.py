"""A3 and A4 (reliability-anchors §0, §1.4).

A3: data that lands at Withings while the user's sync runs (after that sync has read past it)
is stored by the next cycle, not dropped because the user's job was busy.
A4: several workers with the reconciliation cron → one reconciliation per period, not one per
worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from fhir_gateway.ingest.subscriptions import subscribed_applis
from fhir_gateway.withings import identity
from fhir_gateway.withings.sandbox import SandboxState
from tests.pipeline.harness import (
    FAST,
    SCOPE,
    Pipeline,
    WithingsCall,
    notification_form,
    redis_client,
    running_pipeline,
    running_workers,
    settle_in_process,
    settle_redis,
    stored_measure_keys,
)

pytestmark = pytest.mark.redis

RECONCILE_EVERY = 2  # seconds: arq's cron runs it at every even second
RECONCILE_FOR = 11.0
RECONCILE_WORKERS = 4


def land_while_syncing(
    pipeline: Pipeline, userid: str, rng: random.Random, landed: list[tuple[float, int]]
) -> Callable[[WithingsCall], Awaitable[None]]:
    """When the user's first sync reaches its last stream (sleep), its measures sweep is over:
    a new weight lands at Withings then, and Withings notifies us, as it would."""

    async def hook(call: WithingsCall) -> None:
        if landed or call.userid != userid or call.action != "getsummary":
            return
        grpid, appli = pipeline.land_group(rng, userid, 1_000, kind="weight")
        landed.append((time.time(), grpid))
        response = await pipeline.post(pipeline.notification_for(userid, grpid, appli))
        assert response.status_code == 200

    return hook


async def start_first_sync(pipeline: Pipeline) -> tuple[str, list[tuple[float, int]]]:
    rng = random.Random(5)
    userid, announced = pipeline.add_user(rng, groups=30)
    await pipeline.connect(userid)
    landed: list[tuple[float, int]] = []
    pipeline.traffic.on_call.append(land_while_syncing(pipeline, userid, rng, landed))
    grpid, appli = announced[0]
    response = await pipeline.post(pipeline.notification_for(userid, grpid, appli))
    assert response.status_code == 200
    return userid, landed


async def assert_a3_outcome(
    pipeline: Pipeline, userid: str, landed: list[tuple[float, int]]
) -> None:
    assert landed, "the sync never reached the point where data lands"
    landed_at, grpid = landed[0]
    stored = await stored_measure_keys(pipeline.store, userid)
    assert stored[identity.measure_key(grpid, 1, None)] == 1, "data that landed mid-sync is lost"
    # ≤ 2 cycles: the run that was going on when the data landed, and its follow-up.
    assert pipeline.traffic.sync_runs(userid) <= 2
    assert pipeline.traffic.sync_runs(userid, since=landed_at) == 1
    missing, extra, _ = await pipeline.verify()
    assert missing == {} and extra == {}


async def test_a3_data_landing_during_a_sync_is_stored_by_the_next_cycle_with_redis(
    redis_pipeline: Pipeline,
) -> None:
    pipeline = redis_pipeline
    assert pipeline.settings.redis_url is not None
    async with running_workers(pipeline, 2), redis_client(pipeline.settings.redis_url) as client:
        userid, landed = await start_first_sync(pipeline)
        await settle_redis(pipeline, client, timeout=30)
    await assert_a3_outcome(pipeline, userid, landed)


async def test_a3_data_landing_during_a_sync_is_stored_by_the_next_cycle_in_process(
    embedded_pipeline: Pipeline,
) -> None:
    pipeline = embedded_pipeline
    userid, landed = await start_first_sync(pipeline)
    await settle_in_process(pipeline, timeout=30)
    await assert_a3_outcome(pipeline, userid, landed)


async def test_a4_several_workers_run_one_reconciliation_per_period(
    redis_pipeline: Pipeline,
) -> None:
    pipeline = redis_pipeline
    rng = random.Random(6)
    for _ in range(3):
        userid, _ = pipeline.add_user(rng, groups=5)
        await pipeline.connect(userid)
    tuning = replace(FAST, reconcile_interval=float(RECONCILE_EVERY))
    async with running_workers(pipeline, RECONCILE_WORKERS, tuning, reconcile=True):
        started = time.time()
        await asyncio.sleep(RECONCILE_FOR)
        stopped = time.time()
    # Cron instants (even seconds) strictly inside the run; the first may be missed because a
    # worker only schedules from its first poll, so allow one less.
    periods = int(stopped // RECONCILE_EVERY) - int(started // RECONCILE_EVERY)
    for userid in pipeline.userids:
        # Every reconciliation of a user ends with one `notify list` (subscription repair).
        runs = len(pipeline.traffic.of(userid, "list"))
        print(f"A4: user {userid}: {runs} reconciliations in {periods} periods")
        assert periods - 1 <= runs <= periods, (
            f"{runs} reconciliations of user {userid} in {periods} periods "
            f"with {RECONCILE_WORKERS} workers"
        )
        # And the repair subscribed what was missing once, not once per worker.
        assert len(pipeline.traffic.of(userid, "subscribe")) == len(subscribed_applis(SCOPE))


async def test_a3_data_landing_in_the_second_a_sync_read_up_to_is_stored_by_the_next_cycle(
    tmp_path: Path,
) -> None:
    # Withings stamps `modified` in whole seconds and `lastupdate` returns rows modified after
    # it (withings-api §3.1): data landing in the same second as the newest row a sync read
    # must still reach the next cycle, even when its notification never comes (§5.5).
    second = float(int(time.time()))
    sandbox = SandboxState(clock=lambda: second)
    async with running_pipeline(tmp_path, None, sandbox=sandbox) as pipeline:
        rng = random.Random(7)
        userid, announced = pipeline.add_user(rng, groups=10)
        await pipeline.connect(userid)
        landed: list[int] = []

        async def land_quietly(call: WithingsCall) -> None:
            if not landed and call.userid == userid and call.action == "getsummary":
                landed.append(pipeline.land_group(rng, userid, 1_000, kind="weight")[0])

        pipeline.traffic.on_call.append(land_quietly)
        grpid, appli = announced[0]
        assert (await pipeline.post(pipeline.notification_for(userid, grpid, appli))).is_success
        await settle_in_process(pipeline, timeout=30)
        # The next cycle: a notification about something else (an activity day).
        day = int(second) - 86_400
        activity = notification_form(userid, 16, day, day + 3600)
        assert (await pipeline.post(activity)).is_success
        await settle_in_process(pipeline, timeout=30)

        assert landed and pipeline.traffic.sync_runs(userid) == 2
        stored = await stored_measure_keys(pipeline.store, userid)
        assert stored[identity.measure_key(landed[0], 1, None)] == 1, "lost by the cursor"
