"""W2 (reliability-anchors §0): 1,000 forged notifications → 0 jobs, 0 Withings calls, no inbox
record, and one uniform answer per kind (a wrong secret is the 404 of any unknown path)."""

from __future__ import annotations

import asyncio
import random
import secrets
import time

import pytest

from fhir_gateway.jobs.worker import InProcessRunner
from tests.pipeline.harness import (
    Pipeline,
    notification_form,
    queue_snapshot,
    redis_client,
    running_workers,
)

pytestmark = pytest.mark.redis

# Categories Withings may send that we do not sync (profile, bed in/out, …) and nonsense.
UNSYNCED_APPLIS = (3, 5, 46, 50, 51, 52, 55, 58, 99, 9999)


def forged_posts(
    rng: random.Random, pipeline: Pipeline, real_user: str, stranger: str
) -> list[tuple[str, str, str]]:
    """(kind, path, body) × 1,000: wrong secrets, unknown users, unsynced categories."""
    now = int(time.time())
    valid = notification_form(real_user, 1, now - 60, now)
    secret = pipeline.secret
    wrong_secrets = [
        lambda: secrets.token_urlsafe(32),
        lambda: secret[:-1] + ("A" if secret[-1] != "A" else "B"),
        lambda: secret + "x",
        lambda: secret[: len(secret) // 2],
        lambda: secret.upper() if secret.upper() != secret else secret.lower() + "q",
    ]
    posts: list[tuple[str, str, str]] = []
    for _ in range(400):
        posts.append(("wrong_secret", f"/webhooks/withings/{rng.choice(wrong_secrets)()}", valid))
    for index in range(300):
        # A guessed id, or a Withings user who never connected to us.
        userid = stranger if index % 3 == 0 else str(rng.randint(1, 10**12))
        body = notification_form(userid, rng.choice((1, 2, 4, 16, 44)), now - 60, now)
        posts.append(("unknown_user", pipeline.webhook_path, body))
    for _ in range(300):
        body = notification_form(real_user, rng.choice(UNSYNCED_APPLIS), now - 60, now)
        posts.append(("unsynced_appli", pipeline.webhook_path, body))
    rng.shuffle(posts)
    return posts


async def deliver_forged(pipeline: Pipeline) -> None:
    rng = random.Random(2)
    real_user = pipeline.sandbox.add_user(seed=True)
    await pipeline.connect(real_user)
    stranger = pipeline.sandbox.add_user(seed=True)  # at Withings, but not connected to us
    unknown_path = await pipeline.http.post(
        "/no/such/path", content="userid=1&appli=1", headers={"content-type": "text/plain"}
    )
    calls_before = len(pipeline.traffic.calls)
    sandbox_before = sum(pipeline.sandbox.calls.values())

    posts = forged_posts(rng, pipeline, real_user, stranger)
    responses = []
    for chunk in range(0, len(posts), 50):
        batch = posts[chunk : chunk + 50]
        responses += await asyncio.gather(*(pipeline.post(body, path=p) for _, p, body in batch))
    # Give workers (and in-process jobs) time to do whatever a leaked job would do.
    await asyncio.sleep(1.5)

    assert len(posts) == 1000
    for (kind, _, _), response in zip(posts, responses, strict=True):
        if kind == "wrong_secret":
            assert response.status_code == 404
            assert response.content == unknown_path.content
            assert response.headers["content-type"] == unknown_path.headers["content-type"]
        else:
            assert (response.status_code, response.content) == (200, b""), kind
    assert len(pipeline.traffic.calls) == calls_before, "a forged post reached Withings"
    assert sum(pipeline.sandbox.calls.values()) == sandbox_before
    assert await pipeline.inbox_size() == 0


async def test_w2_forged_posts_make_no_job_and_no_withings_call_with_redis(
    redis_pipeline: Pipeline,
) -> None:
    pipeline = redis_pipeline
    assert pipeline.settings.redis_url is not None
    async with running_workers(pipeline, 2), redis_client(pipeline.settings.redis_url) as client:
        await deliver_forged(pipeline)
        snapshot = await queue_snapshot(client)
    assert snapshot.queued == 0 and snapshot.in_progress == []
    assert snapshot.sync_states == {}, "a forged post touched a user's sync state"


async def test_w2_forged_posts_make_no_job_and_no_withings_call_in_process(
    embedded_pipeline: Pipeline,
) -> None:
    pipeline = embedded_pipeline
    runner = pipeline.services.jobs
    assert isinstance(runner, InProcessRunner)
    await deliver_forged(pipeline)
    assert runner.queue.active_ids() == set()
    assert (await runner.coalescer.state(pipeline.userids[0])).is_idle_and_empty
