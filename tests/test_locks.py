from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from fhir_gateway.locks import InProcessLocks, LockFactory, LockUnavailable, RedisLocks
from tests.redis_server import RedisServer, free_port, run_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def max_holders(locks: LockFactory, name: str, workers: int) -> int:
    """Run `workers` tasks through the lock; return how many were ever inside at once."""
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with locks.lock(name, timeout=10):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(workers)))
    return most


# ------------------------------------------------------------------------------ in process


async def test_in_process_lock_admits_one_holder_at_a_time() -> None:
    assert await max_holders(InProcessLocks(), "withings-refresh:1", 30) == 1


async def test_in_process_locks_with_different_names_do_not_block_each_other() -> None:
    locks = InProcessLocks()
    async with locks.lock("a", timeout=1):
        async with locks.lock("b", timeout=0.05):
            pass


async def test_in_process_lock_times_out_with_lock_unavailable() -> None:
    locks = InProcessLocks()
    async with locks.lock("busy", timeout=5):
        with pytest.raises(LockUnavailable, match="busy"):
            async with locks.lock("busy", timeout=5, blocking_timeout=0.02):
                pass
    # The timed-out waiter left nothing behind: the lock is free again.
    async with locks.lock("busy", timeout=0.05):
        pass


async def test_in_process_lock_is_released_when_the_body_raises() -> None:
    locks = InProcessLocks()
    with pytest.raises(RuntimeError):
        async with locks.lock("x", timeout=1):
            raise RuntimeError("boom")
    async with locks.lock("x", timeout=0.05):
        pass


async def test_in_process_registry_forgets_unused_names() -> None:
    locks = InProcessLocks()
    for userid in range(1000):
        async with locks.lock(f"withings-refresh:{userid}", timeout=1):
            pass
    assert len(locks) == 0
    async with locks.lock("held", timeout=1):
        assert len(locks) == 1


# ------------------------------------------------------------------------------ redis


async def test_redis_lock_admits_one_holder_across_clients(redis_server: RedisServer) -> None:
    # Two clients with their own connection pools stand for two worker processes.
    first, second = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
    try:
        locks_a, locks_b = RedisLocks(first), RedisLocks(second)
        inside = 0
        most = 0

        async def work(locks: RedisLocks) -> None:
            nonlocal inside, most
            async with locks.lock("withings-refresh:7", timeout=10):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.005)
                inside -= 1

        await asyncio.gather(*(work(locks_a if i % 2 else locks_b) for i in range(12)))
        assert most == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_lock_busy_raises_after_blocking_timeout(redis_client: Redis) -> None:
    locks = RedisLocks(redis_client)
    async with locks.lock("busy", timeout=10):
        with pytest.raises(LockUnavailable, match="busy"):
            async with locks.lock("busy", timeout=10, blocking_timeout=0.1):
                pass
    assert await redis_client.exists("fhir-gateway:lock:busy") == 0


async def test_redis_lock_has_a_lease_and_is_removed_on_release(redis_client: Redis) -> None:
    locks = RedisLocks(redis_client)
    async with locks.lock("leased", timeout=30):
        ttl_ms = await redis_client.pttl("fhir-gateway:lock:leased")
        assert 0 < ttl_ms <= 30_000
    assert await redis_client.exists("fhir-gateway:lock:leased") == 0


HOLD_FOREVER = """
import asyncio, sys
from redis.asyncio import Redis
from fhir_gateway.locks import RedisLocks

async def main() -> None:
    client = Redis.from_url(sys.argv[1])
    async with RedisLocks(client).lock("withings-refresh:9", timeout=float(sys.argv[2])):
        print("locked", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_holder_never_leaves_the_lock_stuck(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOREVER, redis_server.url, "0.5"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        holder.kill()  # SIGKILL: no finally, no release
        holder.wait()
        locks = RedisLocks(redis_client)
        with pytest.raises(LockUnavailable):
            async with locks.lock("withings-refresh:9", timeout=5, blocking_timeout=0.05):
                pass
        # The lease runs out by itself and the next worker gets in.
        async with locks.lock("withings-refresh:9", timeout=5, blocking_timeout=3):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


async def test_an_expired_holder_does_not_release_the_next_holders_lock(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    locks = RedisLocks(redis_client)
    second_entered = asyncio.Event()
    first_done = asyncio.Event()

    async def slow_first() -> None:
        async with locks.lock("fenced", timeout=0.1):
            await second_entered.wait()  # outlives its lease
        first_done.set()

    async def second() -> None:
        async with locks.lock("fenced", timeout=10, blocking_timeout=5):
            second_entered.set()
            await first_done.wait()
            # The first holder's release must not have deleted our key.
            assert await redis_client.exists("fhir-gateway:lock:fenced") == 1

    with caplog.at_level(logging.WARNING, logger="fhir_gateway.locks"):
        await asyncio.gather(slow_first(), second())
    assert "expired before its holder released it" in caplog.text


async def test_unreachable_redis_is_lock_unavailable() -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    try:
        with pytest.raises(LockUnavailable, match="unreachable"):
            async with RedisLocks(client).lock("any", timeout=1, blocking_timeout=0.1):
                pass
    finally:
        await client.aclose()


def test_missing_redis_server_fails_rather_than_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("tests.redis_server.REDIS_SERVER", str(tmp_path / "no-redis-server"))
    with pytest.raises(pytest.fail.Exception, match="redis-server is not installed"):
        with run_redis_server(tmp_path):
            pass
