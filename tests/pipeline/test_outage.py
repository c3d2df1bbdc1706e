"""W4 (reliability-anchors §0, §1.3.5): Redis stopped during a notification stream of new and
deleted measurements. Every notification is acknowledged 200 (inbox first), and once Redis is
back — empty, as a restarted Redis without persistence is — the sweeper and the restarted
workers lose no measurement and keep no deleted one."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from fhir_gateway.jobs.inbox import INBOX_KIND, PENDING
from tests.pipeline.harness import (
    redis_client,
    running_pipeline,
    running_workers,
    settle_redis,
    user_grpid,
)
from tests.redis_server import RestartableRedis

pytestmark = pytest.mark.redis

USERS = 20
NOTIFICATIONS = 300
OUTAGE = range(100, 200)  # notifications sent while Redis is stopped


async def test_w4_redis_outage_during_a_stream_loses_no_measurement(
    tmp_path: Path, restartable_redis: RestartableRedis
) -> None:
    rng = random.Random(4)
    async with running_pipeline(tmp_path, restartable_redis.url) as pipeline:
        next_index: dict[str, int] = {}
        for _ in range(USERS):
            userid, _ = pipeline.add_user(rng, groups=5)
            next_index[userid] = 5
            await pipeline.connect(userid)
        statuses: list[int] = []
        pending_at_restart = 0
        sent_in_outage: set[str] = set()
        async with running_workers(pipeline, 2) as workers:
            for index in range(NOTIFICATIONS):
                if index == OUTAGE.start:
                    restartable_redis.stop()
                    outage_started = time.monotonic()
                    outage_started_at = time.time()
                if index == OUTAGE.stop:
                    # Counted among the records received during the outage: one from before
                    # it may be pending too (its enqueue timed out on a loaded machine).
                    pending_at_restart = sum(
                        1
                        for record in await pipeline.store.list_records(
                            INBOX_KIND, where={"status": PENDING}
                        )
                        if record.data["received_at"] >= outage_started_at
                    )
                    restartable_redis.start()
                    outage = time.monotonic() - outage_started
                userid = rng.choice(pipeline.userids)
                groups = pipeline.sandbox.user(userid).measure_groups
                older = [user_grpid(pipeline.sandbox, userid, i) for i in range(1, 6)]
                if index % 10 == 5 and any(grpid in groups for grpid in older):
                    # Older data deleted at Withings: only a re-fetch of its window can see
                    # that (getmeas has no tombstones, withings-api §8.6).
                    grpid = rng.choice([grpid for grpid in older if grpid in groups])
                    body = pipeline.notification_for(userid, grpid, 1)
                    pipeline.sandbox.delete_measure_group(userid, grpid)
                else:
                    next_index[userid] += 1
                    grpid, appli = pipeline.land_group(rng, userid, next_index[userid])
                    body = pipeline.notification_for(userid, grpid, appli)
                if index in OUTAGE:
                    sent_in_outage.add(body)
                response = await pipeline.post(body)
                statuses.append(response.status_code)
                await asyncio.sleep(0.01)
            async with redis_client(restartable_redis.url) as client:
                started = time.monotonic()
                await settle_redis(pipeline, client, timeout=60)
                recovered_in = time.monotonic() - started
        missing, extra, expected = await pipeline.verify()
    print(
        f"W4: outage {outage:.1f} s, {pending_at_restart} notifications waited in the inbox, "
        f"recovered {recovered_in:.1f} s after the stream; max ack "
        f"{max(pipeline.latencies) * 1000:.0f} ms; {workers.restarts} worker restarts"
    )
    assert statuses == [200] * NOTIFICATIONS
    # The outage really hit the intake: what arrived meanwhile waited in the inbox.
    assert pending_at_restart == len(sent_in_outage)
    assert workers.restarts >= 1
    assert missing == {}, f"lost: {sum(map(len, missing.values()))} of {expected} keys"
    assert extra == {}
