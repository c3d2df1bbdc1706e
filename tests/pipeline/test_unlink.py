"""Appli 46 action=unlink through the real webhook (withings-api §5.3): the user is flagged for
re-consent at once, and no later notification or reconciliation calls Withings for them."""

from __future__ import annotations

import random
import time

import pytest

from fhir_gateway.jobs.tasks import reconcile_job
from fhir_gateway.jobs.worker import InProcessRunner
from tests.pipeline.harness import (
    Pipeline,
    redis_client,
    running_workers,
    settle_in_process,
    settle_redis,
)

pytestmark = pytest.mark.redis


async def unlink_then_notify(pipeline: Pipeline) -> tuple[str, float]:
    """A connected user with data, unlinked at Withings, then new data announced for them; the
    user and when the unlink was posted."""
    rng = random.Random(46)
    userid, announced = pipeline.add_user(rng, groups=2)
    await pipeline.connect(userid)
    grpid, appli = announced[0]
    assert (await pipeline.post(pipeline.notification_for(userid, grpid, appli))).status_code == 200
    return userid, time.time()


async def assert_unlinked(pipeline: Pipeline, userid: str, unlinked_at: float) -> None:
    stored = await pipeline.services.vault.load(userid)
    assert stored is not None
    assert (stored.status, stored.needs_reauth_reason) == ("needs_reauth", "unlinked")
    assert userid not in await pipeline.services.sync.connected_users()
    assert [c for c in pipeline.traffic.of(userid) if c.at >= unlinked_at] == []


async def post_unlink_and_new_data(pipeline: Pipeline, userid: str) -> None:
    response = await pipeline.post(f"userid={userid}&appli=46&action=unlink")
    assert (response.status_code, response.content) == (200, b"")
    grpid, appli = pipeline.land_group(random.Random(47), userid, 3)
    assert (await pipeline.post(pipeline.notification_for(userid, grpid, appli))).status_code == 200


async def test_unlink_through_the_webhook_stops_all_syncs_in_process(
    embedded_pipeline: Pipeline,
) -> None:
    pipeline = embedded_pipeline
    userid, _ = await unlink_then_notify(pipeline)
    await settle_in_process(pipeline, timeout=30)
    assert pipeline.traffic.sync_runs(userid) == 1  # served before the unlink
    unlinked_at = time.time()
    await post_unlink_and_new_data(pipeline, userid)
    runner = pipeline.services.jobs
    assert isinstance(runner, InProcessRunner)
    await reconcile_job({**runner.queue.context, "score": int(time.time() * 1000)})
    await settle_in_process(pipeline, timeout=30)
    await assert_unlinked(pipeline, userid, unlinked_at)


async def test_unlink_through_the_webhook_stops_all_syncs_with_redis(
    redis_pipeline: Pipeline,
) -> None:
    pipeline = redis_pipeline
    assert pipeline.settings.redis_url is not None
    async with running_workers(pipeline, 2), redis_client(pipeline.settings.redis_url) as client:
        userid, _ = await unlink_then_notify(pipeline)
        await settle_redis(pipeline, client, timeout=30)
        assert pipeline.traffic.sync_runs(userid) == 1
        unlinked_at = time.time()
        await post_unlink_and_new_data(pipeline, userid)
        await settle_redis(pipeline, client, timeout=30)
    await assert_unlinked(pipeline, userid, unlinked_at)
