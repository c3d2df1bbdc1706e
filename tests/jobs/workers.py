"""Run real arq workers in the test's event loop, with our worker settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from arq.worker import Worker

from fhir_gateway.config import Settings
from fhir_gateway.jobs.tasks import JobTuning
from fhir_gateway.jobs.worker import JobServices, worker_settings
from fhir_gateway.metrics import GatewayMetrics
from fhir_gateway.store.base import Store
from tests.jobs.recording_sync import RecordingSync

FAST = JobTuning(
    max_tries=3,
    job_timeout=10.0,
    retry_base_delay=0.05,
    retry_max_delay=0.2,
    lease_refresh=0.5,
    reconcile_interval=7200.0,
)


def services(store: Store, sync: RecordingSync) -> Any:
    @asynccontextmanager
    async def factory(settings: Settings) -> AsyncIterator[JobServices]:
        yield JobServices(store=store, sync=sync)

    return factory


@asynccontextmanager
async def running_workers(
    redis_url: str,
    store: Store,
    sync: RecordingSync,
    *,
    count: int = 1,
    tuning: JobTuning = FAST,
    metrics: list[GatewayMetrics] | None = None,
    adjust_context: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[list[Worker]]:
    """`adjust_context` changes each worker's job ctx once our on_startup has built it."""
    settings = Settings(redis_url=redis_url)
    workers: list[Worker] = []
    for index in range(count):
        options = worker_settings(
            settings,
            services(store, sync),
            tuning=tuning,
            metrics=None if metrics is None else metrics[index],
        )
        if adjust_context is not None:
            options["on_startup"] = _then(options["on_startup"], adjust_context)
        workers.append(Worker(**options, handle_signals=False, poll_delay=0.05))
    tasks = [asyncio.create_task(worker.async_run()) for worker in workers]
    try:
        yield workers
    finally:
        for worker in workers:
            await worker.close()
        await asyncio.gather(*tasks, return_exceptions=True)


def _then(
    on_startup: Callable[[dict[str, Any]], Any], adjust: Callable[[dict[str, Any]], None]
) -> Callable[[dict[str, Any]], Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        await on_startup(ctx)
        adjust(ctx)

    return startup
