from __future__ import annotations

import asyncio
from typing import Any

from arq import Retry
from redis.asyncio import Redis

from fhir_gateway.jobs.queue import (
    DEAD_LETTERS_KIND,
    ArqQueue,
    InProcessQueue,
    QueueUnavailable,
    arq_redis,
    list_dead_letters,
)
from fhir_gateway.store.sqlite import SQLiteStore
from tests.redis_server import RedisServer, free_port

calls: list[tuple[str, int]] = []


async def slow_job(ctx: dict[str, Any], userid: str) -> None:
    calls.append((userid, ctx["job_try"]))
    await ctx["release"].wait()


async def flaky_job(ctx: dict[str, Any], userid: str) -> None:
    calls.append((userid, ctx["job_try"]))
    if ctx["job_try"] < ctx["succeed_on"]:
        raise Retry(defer=0.01)


async def broken_job(ctx: dict[str, Any], userid: str) -> None:
    raise ValueError("a bug, not a token")


async def test_in_process_queue_refuses_an_id_queued_or_running() -> None:
    calls.clear()
    release = asyncio.Event()
    queue = InProcessQueue({"release": release})
    assert await queue.enqueue("sync:1", slow_job, "1") is True
    assert await queue.enqueue("sync:1", slow_job, "1") is False  # queued
    await asyncio.sleep(0.01)
    assert calls == [("1", 1)]
    assert await queue.enqueue("sync:1", slow_job, "1") is False  # running
    assert await queue.enqueue("sync:2", slow_job, "2") is True  # another id runs alongside
    release.set()
    await queue.join()
    assert await queue.enqueue("sync:1", slow_job, "1") is True  # finished: free again
    await queue.join()
    await queue.close()
    assert len(calls) == 3


async def test_in_process_queue_retries_with_increasing_job_try() -> None:
    calls.clear()
    queue = InProcessQueue({"succeed_on": 3}, max_tries=5)
    await queue.enqueue("j", flaky_job, "9")
    await queue.join()
    assert calls == [("9", 1), ("9", 2), ("9", 3)]


async def test_in_process_queue_dead_letters_after_max_tries(store: SQLiteStore) -> None:
    calls.clear()
    queue = InProcessQueue({"succeed_on": 99, "store": store}, max_tries=3)
    await queue.enqueue("j", flaky_job, "9")
    await queue.join()
    assert len(calls) == 3
    [letter] = await list_dead_letters(store)
    assert letter.kind == DEAD_LETTERS_KIND
    assert letter.data["job"] == "flaky_job"
    assert letter.data["userid"] == "9"
    assert letter.data["tries"] == 3


async def test_in_process_queue_records_a_crashing_job(store: SQLiteStore) -> None:
    queue = InProcessQueue({"store": store})
    await queue.enqueue("j", broken_job, "5")
    await queue.join()
    [letter] = await list_dead_letters(store)
    assert letter.data["error_class"] == "ValueError"
    assert letter.data["error"] == "a bug, not a token"


async def test_closed_in_process_queue_refuses_work() -> None:
    queue = InProcessQueue({})
    await queue.close()
    try:
        await queue.enqueue("j", broken_job, "5")
    except QueueUnavailable:
        return
    raise AssertionError("expected QueueUnavailable")


async def test_arq_queue_refuses_a_queued_id_even_under_a_burst(redis_server: RedisServer) -> None:
    queue = ArqQueue.from_url(redis_server.url)
    try:
        answers = await asyncio.gather(
            *(queue.enqueue("sync:1", slow_job, "1") for _ in range(200))
        )
        assert answers.count(True) == 1
        assert await queue.enqueue("sync:2", slow_job, "2") is True
        assert await queue.redis.zcard("arq:queue") == 2
    finally:
        await queue.close()


async def test_arq_jobs_are_json_not_pickle(redis_server: RedisServer) -> None:
    queue = ArqQueue.from_url(redis_server.url)
    try:
        await queue.enqueue("sync:1", slow_job, "1")
        client = Redis.from_url(redis_server.url)
        raw = await client.get("arq:job:sync:1")
        await client.aclose()
        assert raw is not None and raw.startswith(b"{")
        assert b'"f": "slow_job"' in raw
    finally:
        await queue.close()


async def test_arq_queue_reports_redis_down_as_queue_unavailable() -> None:
    queue = ArqQueue(arq_redis(f"redis://127.0.0.1:{free_port()}/0"), owns_connection=True)
    try:
        await queue.enqueue("sync:1", slow_job, "1")
    except QueueUnavailable:
        return
    finally:
        await queue.close()
    raise AssertionError("expected QueueUnavailable")
