"""A record-only in-memory Store with the contract's compare-and-set semantics, for vault tests.

Only the `*_record` methods exist; it yields to the event loop on every call, as a real backend
does on each round trip, so concurrent tasks interleave inside store calls and races can show.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fhir_gateway.errors import VersionConflict
from fhir_gateway.store import SQLiteStore, Store
from fhir_gateway.store.base import JSONObject, Record
from tests.store.conftest import make_mongo_store


class MemoryRecordStore:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], Record] = {}

    async def get_record(self, kind: str, key: str) -> Record | None:
        await asyncio.sleep(0)
        record = self._records.get((kind, key))
        return None if record is None else copy.deepcopy(record)

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        await asyncio.sleep(0)
        current = self._records.get((kind, key))
        current_version = 0 if current is None else current.version
        if expected_version is not None and expected_version != current_version:
            raise VersionConflict(f"{kind}/{key}: expected version {expected_version}")
        record = Record(kind, key, copy.deepcopy(data), current_version + 1)
        self._records[(kind, key)] = record
        return copy.deepcopy(record)

    async def delete_record(self, kind: str, key: str) -> bool:
        await asyncio.sleep(0)
        return self._records.pop((kind, key), None) is not None

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]:
        await asyncio.sleep(0)
        matches = [
            copy.deepcopy(record)
            for (record_kind, _), record in self._records.items()
            if record_kind == kind
            and all(record.data.get(field) == value for field, value in (where or {}).items())
        ]
        return sorted(matches, key=lambda record: record.key)[:limit]


class HookedStore:
    """Wraps a store; `before_put` runs before every put_record, to inject faults and races.

    The hook may raise (the process "dies" before the write) or write something itself (another
    worker wins the race); the wrapped store's own behaviour is untouched.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.before_put: Callable[[str, str], Awaitable[None]] | None = None

    async def get_record(self, kind: str, key: str) -> Record | None:
        return await self._inner.get_record(kind, key)  # type: ignore[no-any-return]

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        if self.before_put is not None:
            await self.before_put(kind, key)
        return await self._inner.put_record(  # type: ignore[no-any-return]
            kind, key, data, expected_version=expected_version
        )

    async def delete_record(self, kind: str, key: str) -> bool:
        return await self._inner.delete_record(kind, key)  # type: ignore[no-any-return]

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]:
        return await self._inner.list_records(kind, where=where, limit=limit)  # type: ignore[no-any-return]


# The vault, state and token tests run against every backend: this fake, SQLite, and MongoDB
# (mongomock-motor, made to yield like real I/O by the store contract tests' fixtures).
STORE_KINDS = ["memory", "sqlite", "mongo"]


@asynccontextmanager
async def open_store(kind: str, directory: Path) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryRecordStore()
        return
    store: Store
    if kind == "sqlite":
        store = SQLiteStore(directory / "gateway.sqlite3")
    else:
        store = make_mongo_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()
