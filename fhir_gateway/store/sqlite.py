"""The embedded Store: stdlib sqlite3 in WAL mode, one writer thread and a pool of readers.

Every call runs off the event loop, on ConnectionThreads (sqlite_threads.py). Writes go through
one writer thread that owns the write connection, so read-modify-write sequences (versions,
compare-and-set) are serialised in this process, and BEGIN IMMEDIATE serialises them against
other processes (app and worker). A third, single-connection thread answers `data_version`.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import orjson

from fhir_gateway.errors import StoreError, VersionConflict
from fhir_gateway.fhir.indexing import search_index
from fhir_gateway.store import sqlite_query
from fhir_gateway.store import sqlite_work as work
from fhir_gateway.store.base import (
    JSONObject,
    Page,
    Query,
    Record,
    Resource,
    StoredResource,
    UpsertResult,
)
from fhir_gateway.store.sqlite_threads import ConnectionThreads, ProbeRun, SharedProbe
from fhir_gateway.store.versioning import content_hash, date_span, next_last_updated, stamp

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_READERS = 2
# Numbers the probing connections, so data versions read by two of them never compare equal.
_EPOCHS = itertools.count(1)


class SQLiteStore:
    """The Store for one machine: a single SQLite file, fast enough for a million measures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: ConnectionThreads | None = None
        self._readers: ConnectionThreads | None = None
        # One connection that only ever runs PRAGMA data_version: it never writes, so every
        # commit, from this process or another, is one by "another connection".
        self._prober: ConnectionThreads | None = None
        self._epoch = 0
        self._shared_probe = SharedProbe(self._probe_data_version)
        self._known_span = 0

    # -------------------------------------------------------------------- plumbing

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = ConnectionThreads("sqlite-writer", 1, self._connect_writer)
        self._readers = ConnectionThreads("sqlite-reader", _READERS, self._connect_reader)
        self._prober = ConnectionThreads("sqlite-version", 1, self._connect_reader)
        self._epoch = next(_EPOCHS)
        try:
            await self._write(self._create_schema)
        except BaseException:
            await self.close()
            raise

    def _connect_writer(self) -> sqlite3.Connection:
        return work.connect(self.path, readonly=False)

    def _connect_reader(self) -> sqlite3.Connection:
        return work.connect(self.path, readonly=True)

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        connection.executescript(sqlite_query.SCHEMA)
        self._known_span = connection.execute("SELECT max_span FROM span_bound").fetchone()[0]

    async def close(self) -> None:
        pools = (self._writer, self._readers, self._prober)
        self._writer = self._readers = self._prober = None
        for pool in pools:
            if pool is not None:
                await pool.shutdown()

    async def ping(self) -> None:
        await self._read(work.fetch_one, "SELECT 1", ())

    async def data_version(self) -> int:
        """Changes whenever anything commits to the file, in this process or any other.

        Compare for equality only. Concurrent callers share one check that started after each
        of them asked (see SharedProbe), so a commit finished before the call is always seen.
        """
        return await self._shared_probe()

    def _probe_data_version(self, run: ProbeRun) -> asyncio.Future[int]:
        if self._prober is None:
            raise StoreError("the SQLite store is closed")
        return self._prober.submit(work.data_version, self._epoch, run)

    async def _write(self, work: Callable[[sqlite3.Connection, *_Ts], _T], *args: *_Ts) -> _T:
        if self._writer is None:
            raise StoreError("the SQLite store is closed")
        try:
            return await self._writer.submit(work, *args)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite store failed: {error}") from error

    async def _read(self, work: Callable[[sqlite3.Connection, *_Ts], _T], *args: *_Ts) -> _T:
        if self._readers is None:
            raise StoreError("the SQLite store is closed")
        try:
            return await self._readers.submit(work, *args)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite store failed: {error}") from error

    # -------------------------------------------------------------------- FHIR resources

    async def upsert(self, resources: Sequence[Resource]) -> UpsertResult:
        return await self._write(self._upsert, resources)

    def _upsert(
        self, connection: sqlite3.Connection, resources: Sequence[Resource]
    ) -> UpsertResult:
        created = updated = unchanged = 0
        with work.transaction(connection):
            for resource in resources:
                type_, id_ = resource["resourceType"], resource["id"]
                digest = content_hash(resource)
                current = connection.execute(
                    "SELECT rid, version, last_updated, deleted, content_hash FROM resources"
                    " WHERE type = ? AND id = ?",
                    (type_, id_),
                ).fetchone()
                if current is not None and not current[3] and current[4] == digest:
                    unchanged += 1
                    continue
                version = 1 if current is None else current[1] + 1
                last_updated = next_last_updated(None if current is None else current[2])
                json = stamp(resource, version, last_updated)
                index = search_index(resource)
                row = (
                    version,
                    last_updated,
                    digest,
                    json,
                    index.patient,
                    index.device,
                    index.date_start,
                    index.date_end,
                    index.code_group,
                )
                if current is None:
                    rid = connection.execute(
                        "INSERT INTO resources (version, last_updated, deleted, content_hash, json,"
                        " patient, device, date_start, date_end, code_group, type, id)"
                        " VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*row, type_, id_),
                    ).lastrowid
                    created += 1
                else:
                    rid = current[0]
                    connection.execute(
                        "UPDATE resources SET version = ?, last_updated = ?, deleted = 0,"
                        " content_hash = ?, json = ?, patient = ?, device = ?, date_start = ?,"
                        " date_end = ?, code_group = ? WHERE rid = ?",
                        (*row, rid),
                    )
                    for table in ("tokens", "quantities", "components"):
                        connection.execute(f"DELETE FROM {table} WHERE rid = ?", (rid,))
                    updated += 1
                patient = index.patient or ""
                tokens = {
                    (field, token.system, token.code)
                    for field, tokens in (
                        ("code", index.codes),
                        ("category", index.categories),
                        ("identifier", index.identifiers),
                    )
                    for token in tokens
                }
                connection.executemany(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*token, patient, index.date_start, id_, rid) for token in tokens],
                )
                connection.executemany(
                    "INSERT INTO quantities VALUES (?, ?, ?, ?, ?)",
                    [(rid, q.value, q.system, q.code, q.unit) for q in index.quantities],
                )
                connection.executemany(
                    "INSERT INTO components VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (rid, c.token.system, c.token.code, c.quantity.value)
                        + (c.quantity.system, c.quantity.code, c.quantity.unit)
                        for c in index.components
                    ],
                )
                connection.execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (type_, id_, version, last_updated, json, index.date_start),
                )
                span = date_span(index)
                if span > self._known_span:
                    connection.execute(
                        "UPDATE span_bound SET max_span = ?1 WHERE max_span < ?1", (span,)
                    )
                    self._known_span = span
        return UpsertResult(created=created, updated=updated, unchanged=unchanged)

    async def read(self, resource_type: str, id_: str) -> StoredResource | None:
        return await self._read(
            work.fetch_stored,
            "SELECT type, id, version, last_updated, deleted,"
            " CASE WHEN deleted THEN x'' ELSE json END, date_start"
            " FROM resources WHERE type = ? AND id = ?",
            (resource_type, id_),
        )

    async def vread(self, resource_type: str, id_: str, version_id: int) -> StoredResource | None:
        return await self._read(
            work.fetch_stored,
            "SELECT type, id, version, last_updated, deleted, json, date_start FROM history"
            " WHERE type = ? AND id = ? AND version = ?",
            (resource_type, id_, version_id),
        )

    async def history(self, resource_type: str, id_: str) -> list[StoredResource]:
        return await self._read(
            work.fetch_all_stored,
            "SELECT type, id, version, last_updated, deleted, json, date_start FROM history"
            " WHERE type = ? AND id = ? ORDER BY version DESC",
            (resource_type, id_),
        )

    async def delete(self, resource_type: str, id_: str) -> bool:
        return await self._write(self._delete, resource_type, id_)

    def _delete(self, connection: sqlite3.Connection, resource_type: str, id_: str) -> bool:
        with work.transaction(connection):
            current = connection.execute(
                "SELECT rid, version, last_updated, deleted, date_start FROM resources"
                " WHERE type = ? AND id = ?",
                (resource_type, id_),
            ).fetchone()
            if current is None or current[3]:
                return False
            rid, version, last_updated = current[0], current[1] + 1, next_last_updated(current[2])
            # The current row keeps its JSON but is flagged deleted; searches skip it.
            connection.execute(
                "UPDATE resources SET version = ?, last_updated = ?, deleted = 1 WHERE rid = ?",
                (version, last_updated, rid),
            )
            connection.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, 1, x'', ?)",
                (resource_type, id_, version, last_updated, current[4]),
            )
        return True

    async def search(self, query: Query) -> Page:
        statement, backwards = sqlite_query.search(query)
        return await self._read(work.fetch_page, statement, query.limit, backwards)

    async def count(self, query: Query) -> int:
        statement = sqlite_query.count(query)
        row = await self._read(work.fetch_one, statement.sql, statement.params)
        return int(row[0])

    async def lastn(self, query: Query, max_per_group: int) -> list[StoredResource]:
        return await self._read(work.newest_per_group, query, max_per_group)

    # -------------------------------------------------------------------- records

    async def get_record(self, kind: str, key: str) -> Record | None:
        row = await self._read(
            work.fetch_one,
            "SELECT version, data FROM records WHERE kind = ? AND key = ?",
            (kind, key),
        )
        return None if row is None else Record(kind, key, orjson.loads(row[1]), row[0])

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        text = orjson.dumps(data).decode()

        def compare_and_set(connection: sqlite3.Connection) -> Record:
            with work.transaction(connection):
                row = connection.execute(
                    "SELECT version FROM records WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                current = 0 if row is None else row[0]
                if expected_version is not None and expected_version != current:
                    raise VersionConflict(
                        f"record {kind}/{key} is not at version {expected_version}"
                    )
                connection.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?) ON CONFLICT (kind, key)"
                    " DO UPDATE SET version = excluded.version, data = excluded.data",
                    (kind, key, current + 1, text),
                )
            return Record(kind, key, orjson.loads(text), current + 1)

        return await self._write(compare_and_set)

    async def delete_record(self, kind: str, key: str) -> bool:
        def remove(connection: sqlite3.Connection) -> bool:
            cursor = connection.execute(
                "DELETE FROM records WHERE kind = ? AND key = ?", (kind, key)
            )
            return cursor.rowcount > 0

        return await self._write(remove)

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]:
        conditions, params = ["kind = ?"], list[object]([kind])
        for name, value in (where or {}).items():
            if '"' in name:
                raise StoreError(f"record field names cannot contain quotes: {name!r}")
            path = f'$."{name}"'
            # Type-checked equality, as in MongoDB: true is not 1 and 1 is not "1".
            if isinstance(value, bool):
                conditions.append("json_type(data, ?) = ?")
                params.extend((path, "true" if value else "false"))
            else:
                kinds = "('text')" if isinstance(value, str) else "('integer', 'real')"
                conditions.append(f"json_type(data, ?) IN {kinds} AND json_extract(data, ?) = ?")
                params.extend((path, path, value))
        sql = (
            f"SELECT key, version, data FROM records WHERE {' AND '.join(conditions)}"
            " ORDER BY key LIMIT ?"
        )
        rows = await self._read(work.fetch_all, sql, (*params, limit))
        return [Record(kind, key, orjson.loads(data), version) for key, version, data in rows]
