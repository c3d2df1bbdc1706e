"""Fixtures for the pipeline scenarios: a real redis-server per test (fails, never skips, when
redis-server is missing), one that can be stopped mid-test, and a gateway app with or without
Redis."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.pipeline.harness import Pipeline, running_pipeline
from tests.redis_server import RedisServer, RestartableRedis, run_redis_server

# httpx's ASGITransport imports sniffio on every request to detect trio (httpx
# _transports/asgi.py, is_running_trio). Not installed, that import fails each time after a
# search of the whole sys.path: ~0.3 ms of CPU per webhook post, in the very process whose ack
# latency W1 measures. A None entry fails the same import at once (same ImportError).
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_pipeline(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Pipeline]:
    async with running_pipeline(tmp_path, redis_server.url) as pipeline:
        yield pipeline


@pytest.fixture
async def embedded_pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with running_pipeline(tmp_path, None) as pipeline:
        yield pipeline
