"""open_services wiring: locks and budget from settings, and the worker process's flavour."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fhir_gateway.services
from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError
from fhir_gateway.jobs.budget import MemoryBudget, RedisBudget, make_budget
from fhir_gateway.jobs.worker import InProcessRunner, RedisJobClient
from fhir_gateway.locks import InProcessLocks, LockUnavailable, RedisLocks, make_locks
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.services import open_services
from fhir_gateway.withings.keys import generate_key
from tests.redis_server import RedisServer, run_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


def _settings(tmp_path: Path, redis_url: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, encryption_key=generate_key(), redis_url=redis_url)


async def test_without_redis_locks_and_budget_stay_in_the_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert isinstance(make_locks(settings), InProcessLocks)
    assert isinstance(make_budget(settings), MemoryBudget)


async def test_with_redis_locks_are_shared_between_processes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = _settings(tmp_path, redis_server.url)
    first, second = make_locks(settings), make_locks(settings)
    assert isinstance(first, RedisLocks) and isinstance(second, RedisLocks)
    budget = make_budget(settings)
    assert isinstance(budget, RedisBudget)
    try:
        async with first.lock("withings-refresh:7", timeout=5):
            with pytest.raises(LockUnavailable):
                async with second.lock("withings-refresh:7", timeout=5, blocking_timeout=0.1):
                    pass
        async with second.lock("withings-refresh:7", timeout=5, blocking_timeout=0.1):
            pass  # released by the first holder
        await budget.acquire()
    finally:
        await first.aclose()
        await second.aclose()
        await budget.aclose()


def test_services_module_does_not_import_redis() -> None:
    tree = ast.parse(Path(fhir_gateway.services.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "redis" for name in imported)


async def test_the_web_process_without_redis_runs_the_jobs_itself(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    async with open_services(_settings(tmp_path), metrics=metrics) as services:
        assert isinstance(services.jobs, InProcessRunner)
        assert services.jobs.metrics is metrics and services.metrics is metrics


async def test_a_worker_process_needs_redis(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        async with open_services(_settings(tmp_path), worker=True):
            pass


async def test_a_worker_process_never_starts_the_in_process_runtime(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with open_services(_settings(tmp_path, redis_server.url), worker=True) as services:
        assert isinstance(services.jobs, RedisJobClient)
        assert isinstance(services.locks, RedisLocks)
