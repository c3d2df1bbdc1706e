"""Fixtures: every contract test runs against a SQLite store and a MongoDB store.

MongoDB is mongomock-motor (we mock only what we do not own and cannot run here). Two
adjustments are made to that mock, both in this file and nowhere in production code:

* pymongo >= 4.10 passes `sort=` to the bulk builder's `add_update`/`add_replace`; mongomock's
  BulkOperationBuilder does not accept it, so `bulk_write` breaks. We wrap those two methods to
  accept `sort=None` and to raise if a real sort is ever passed, so the shim can never silently
  change semantics. Pinning pymongo<4.10 instead would test against another driver than the one
  production runs. (`add_delete` receives no `sort`, so it is left alone.)
* mongomock-motor's coroutines never suspend, so concurrent tasks could never interleave inside
  a store call and the concurrency tests could not fail. `YieldingDatabase` yields to the event
  loop around every collection call, as a real driver does on each network round trip.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import mongomock.collection
import pytest
from mongomock_motor import AsyncMongoMockClient

from fhir_gateway.store import MongoStore, SQLiteStore, Store

_Builder = mongomock.collection.BulkOperationBuilder


def _accept_no_sort(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def without_sort(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
        if sort is not None:
            raise NotImplementedError(f"mongomock cannot honour a bulk-write sort ({sort!r})")
        return method(self, *args, **kwargs)

    without_sort.__accepts_sort__ = True  # type: ignore[attr-defined]
    return without_sort


for _name in ("add_update", "add_replace"):
    _method = getattr(_Builder, _name)
    if not getattr(_method, "__accepts_sort__", False):
        setattr(_Builder, _name, _accept_no_sort(_method))


class _YieldingCollection:
    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._collection, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        async def round_trip(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            result = await attribute(*args, **kwargs)
            await asyncio.sleep(0)
            return result

        return round_trip


class YieldingDatabase:
    """An AsyncIOMotorDatabase look-alike whose collection calls suspend like real I/O."""

    def __init__(self, database: Any) -> None:
        self._database = database

    def get_collection(self, name: str, **options: Any) -> _YieldingCollection:
        return _YieldingCollection(self._database.get_collection(name, **options))

    def __getitem__(self, name: str) -> _YieldingCollection:
        return self.get_collection(name)

    async def command(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return await self._database.command(*args, **kwargs)


def make_mongo_store() -> MongoStore:
    return MongoStore(YieldingDatabase(AsyncMongoMockClient()["fhir_gateway_test"]))


@pytest.fixture(params=["sqlite", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "store.sqlite3")
    else:
        backend = make_mongo_store()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
