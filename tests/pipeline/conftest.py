"""Fixtures for the pipeline scenarios: a real redis-server per test (fails, never skips, when
redis-server is missing), one that can be stopped mid-test, and a gateway app with or without
Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.pipeline.harness import Pipeline, RestartableRedis, running_pipeline
from tests.redis_server import RedisServer, run_redis_server


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
