"""Fire-and-forget work of this process (subscriptions, the initial backfill until a queue runs it).

asyncio keeps only weak references to tasks, so an unreferenced task can vanish mid-flight; this
holds them, logs their failures (class and safe message, never a token), and cancels what is
left when the services close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from fhir_gateway.errors import GatewayError

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, name: str, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` in the background under `name` (used in logs only)."""
        if self._closed:
            work.close()
            raise RuntimeError("background tasks are closed")
        task = asyncio.create_task(self._run(name, work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until every task, including those started meanwhile, has finished."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, name: str, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except GatewayError as error:
            # Nobody awaits this task: unlogged, the failure would be invisible. Our errors'
            # messages are safe to log (they never carry tokens).
            log.warning("background task %s failed: %s: %s", name, type(error).__name__, error)
        except Exception as error:
            log.error("background task %s failed unexpectedly", name, exc_info=error)
