"""Threads that own SQLite connections and run work for the event loop, one queue per pool.

Why not `loop.run_in_executor(ThreadPoolExecutor)`: its round trip goes through a
concurrent.futures.Future, a condition variable, an idle semaphore and a wrapped asyncio future;
measured on the 2-core machine with 32 requests in flight it costs ~12-16 µs of event-loop CPU per
call, this pool ~1.5 µs (one SimpleQueue.put, one call_soon_threadsafe). The work function and
its arguments travel as they are, so callers build no closure per call.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar, TypeVarTuple

from fhir_gateway.errors import StoreError

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# (work, arguments, future) — or None, which tells one thread to close its connection and exit.
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"] | None


def _settle(future: asyncio.Future[Any], failed: bool, outcome: Any) -> None:
    if future.cancelled():
        return  # the caller went away; its result is dropped
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class ConnectionThreads:
    """`size` threads, each lazily opening its own connection with `connect`."""

    def __init__(self, name: str, size: int, connect: Callable[[], sqlite3.Connection]) -> None:
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._connect = connect
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(
        self, work: Callable[[sqlite3.Connection, *_Ts], _T], *args: *_Ts
    ) -> asyncio.Future[_T]:
        """Queue `work(connection, *args)`; the future resolves on the calling loop."""
        if self._closed:
            raise StoreError("the SQLite store is closed")
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._jobs.put((work, args, future))
        return future

    async def shutdown(self) -> None:
        """Finish the queued work, then close every connection and stop the threads."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        connection: sqlite3.Connection | None = None
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            work, args, future = job
            try:
                if connection is None:
                    connection = self._connect()
                outcome, failed = work(connection, *args), False
            except BaseException as error:  # handed to the awaiting coroutine, never swallowed
                outcome, failed = error, True
            try:
                future.get_loop().call_soon_threadsafe(_settle, future, failed, outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to receive the outcome
            del job, work, args, future, outcome  # drop references while idle
        if connection is not None:
            connection.close()


class ProbeRun:
    """One queued run of a shared probe; the worker flips `started` just before it reads."""

    __slots__ = ("started", "callers")

    def __init__(self) -> None:
        self.started = False
        self.callers: list[asyncio.Future[int]] = []


class SharedProbe:
    """One run of `probe` answers every caller that asked before that run started reading.

    A caller joins the queued run while the worker has not started it (the worker sets
    `ProbeRun.started` before it reads, and a caller checks the flag after it arrived), else
    queues a new run; so every answer comes from a read that began after the caller asked, and
    a commit finished before the call is always seen. Under load, N checks cost one round trip.
    """

    def __init__(self, probe: Callable[[ProbeRun], asyncio.Future[int]]) -> None:
        self._probe = probe
        self._queued: ProbeRun | None = None

    async def __call__(self) -> int:
        run = self._queued
        if run is None or run.started:
            run = ProbeRun()
            running = self._probe(run)  # StoreError when closed: raised to this caller
            self._queued = run
            running.add_done_callback(functools.partial(self._finished, run))
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        run.callers.append(answer)
        return await answer

    def _finished(self, run: ProbeRun, done: asyncio.Future[int]) -> None:
        if self._queued is run:
            self._queued = None
        if done.cancelled():
            self._answer(run.callers, None, StoreError("the SQLite version check was cancelled"))
        elif (error := done.exception()) is not None:
            self._answer(run.callers, None, error)
        else:
            self._answer(run.callers, done.result(), None)

    @staticmethod
    def _answer(
        callers: list[asyncio.Future[int]], version: int | None, error: BaseException | None
    ) -> None:
        for caller in callers:
            if caller.done():
                continue
            if error is None:
                assert version is not None
                caller.set_result(version)
            else:
                # A fresh exception per caller: one shared instance would collect every
                # awaiting task's traceback.
                failure = StoreError(f"SQLite store failed: {error}")
                failure.__cause__ = error
                caller.set_exception(failure)
