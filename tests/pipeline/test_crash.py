"""A1 (reliability-anchors §0, §4.4): worker processes killed with SIGKILL at random points of
their syncs, again and again, while data keeps landing → 0 lost, 0 duplicated Observations, and
nothing stuck (arq claims, per-user sync leases, locks) once their timeouts have passed.

Real OS processes (`python -m tests.pipeline.worker_process`) share the SQLite file and the
redis-server with the gateway; Withings is the sandbox served by uvicorn on a loopback port.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fhir_gateway.withings.sandbox import SandboxState, create_sandbox
from tests.pipeline.harness import (
    FAST,
    CountingWithings,
    Pipeline,
    pipeline_settings,
    redis_client,
    running_pipeline,
    serving,
    settle_redis,
    worker_processes,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

MID_SYNC_KILLS = 20
MAX_ROUNDS = 40
USERS = 8
GROUPS_PER_USER = 40
PAGE_SIZE = 10  # a first sync of 40 groups is 4 getmeas pages: many points to die at
WITHINGS_DELAY = 0.01


async def land_and_notify(
    pipeline: Pipeline, rng: random.Random, next_index: dict[str, int]
) -> None:
    """New data for a few users, announced as Withings would; sometimes an edit of old data."""
    for userid in rng.sample(pipeline.userids, 3):
        if rng.random() < 0.25:
            grpid = rng.choice(list(pipeline.sandbox.user(userid).measure_groups))
            group = pipeline.sandbox.user(userid).measure_groups[grpid]
            measures = [{**m, "value": m["value"] + 1} for m in group["measures"]]
            pipeline.sandbox.change_measure_group(userid, grpid, measures=measures)
            appli = 4 if any(m["type"] == 10 for m in measures) else 1
        else:
            next_index[userid] += 1
            grpid, appli = pipeline.land_group(rng, userid, next_index[userid])
        response = await pipeline.post(pipeline.notification_for(userid, grpid, appli))
        assert response.status_code == 200


async def test_a1_workers_killed_mid_sync_lose_nothing_and_leave_nothing_stuck(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    rng = random.Random(11)
    state = SandboxState(measure_page_size=PAGE_SIZE)
    withings = CountingWithings(create_sandbox(state), WITHINGS_DELAY)
    async with serving(withings) as withings_url:
        settings = replace(
            pipeline_settings(tmp_path, redis_server.url), withings_api_url=withings_url
        )
        async with (
            running_pipeline(
                tmp_path, redis_server.url, sandbox=state,
                withings=httpx.AsyncHTTPTransport(), settings=settings,
            ) as pipeline,
            redis_client(redis_server.url) as client,
        ):  # fmt: skip
            next_index: dict[str, int] = {}
            for _ in range(USERS):
                userid, _ = pipeline.add_user(rng, GROUPS_PER_USER)
                next_index[userid] = GROUPS_PER_USER
                await pipeline.connect(userid)
            started = time.monotonic()
            kills = mid_call = mid_sync = 0
            with worker_processes(settings, tmp_path) as workers:
                for _ in range(MAX_ROUNDS):
                    if mid_sync >= MID_SYNC_KILLS:
                        break
                    await land_and_notify(pipeline, rng, next_index)
                    seen = withings.requests
                    target = seen + rng.randint(1, 12)
                    process = workers.spawn()
                    async with asyncio.timeout(15):
                        while withings.requests < target and process.poll() is None:
                            await asyncio.sleep(0.002)
                    await asyncio.sleep(rng.uniform(0, 0.02))  # between calls, or inside one
                    in_call = withings.in_flight > 0
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=5)
                    kills += 1
                    mid_call += in_call
                    mid_sync += withings.requests > seen
                killing = time.monotonic() - started
                # Survivors: the killed jobs come back once arq's claim (job_timeout + 10 s)
                # and the sync lease (3 × lease_refresh) have run out.
                workers.spawn()
                workers.spawn()
                snapshot = await settle_redis(pipeline, client, timeout=FAST.job_timeout + 60)
            settled = time.monotonic() - started - killing
            missing, extra, expected = await pipeline.verify()
    print(
        f"A1: {kills} SIGKILLs ({mid_sync} mid-sync, {mid_call} inside a Withings call) in "
        f"{killing:.1f} s; settled {settled:.1f} s later; {expected} keys; "
        f"{withings.requests} Withings requests"
    )
    assert mid_sync >= MID_SYNC_KILLS
    assert missing == {}, f"lost: {missing}"
    assert extra == {}, f"duplicated or unexpected: {extra}"
    assert snapshot.in_progress == [] and snapshot.locks == [] and snapshot.busy_users == []
