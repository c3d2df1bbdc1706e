"""The embedded Store: stdlib sqlite3 in WAL mode, one writer thread and a pool of readers.

Every call runs off the event loop. Writes go through a single-thread executor that owns the
write connection, so read-modify-write sequences (versions, compare-and-set) are serialised in
this process, and BEGIN IMMEDIATE serialises them against other processes (app and worker).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from fhir_gateway.errors import StoreError, VersionConflict
from fhir_gateway.fhir.indexing import search_index
from fhir_gateway.store import sqlite_query
from fhir_gateway.store.base import (
    JSONObject,
    Page,
    Query,
    Record,
    Resource,
    StoredResource,
    UpsertResult,
    from_micros,
)
from fhir_gateway.store.versioning import content_hash, date_span, next_last_updated, stamp

_T = TypeVar("_T")
_READERS = 4


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    if readonly:
        connection.execute("PRAGMA query_only = 1")
    return connection


@contextmanager
def _transaction(connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    connection.execute(begin)
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _stored(row: Sequence[Any]) -> StoredResource:
    type_, id_, version, last_updated, deleted, json, date_start = row
    return StoredResource(
        resource_type=type_,
        id=id_,
        version_id=version,
        last_updated=from_micros(last_updated),
        deleted=bool(deleted),
        json=bytes(json),
        date_start=date_start,
    )


class SQLiteStore:
    """The Store for one machine: a single SQLite file, fast enough for a million measures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._write_connection: sqlite3.Connection | None = None
        self._read_connections: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._known_span = 0

    # -------------------------------------------------------------------- plumbing

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(_READERS, thread_name_prefix="sqlite-reader")
        try:
            await self._write(self._create_schema)
        except BaseException:
            await self.close()
            raise

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        connection.executescript(sqlite_query.SCHEMA)
        self._known_span = connection.execute("SELECT max_span FROM span_bound").fetchone()[0]

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        for pool in (writer, readers):
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        with self._lock:
            connections = [*self._read_connections, self._write_connection]
            self._read_connections, self._write_connection = [], None
        for connection in connections:
            if connection is not None:
                connection.close()

    async def ping(self) -> None:
        await self._read(lambda connection: connection.execute("SELECT 1").fetchone())

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._writer is None:
            raise StoreError("the SQLite store is closed")

        def run() -> _T:
            if self._write_connection is None:
                self._write_connection = _connect(self.path, readonly=False)
            return work(self._write_connection)

        return await self._run(self._writer, run)

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._readers is None:
            raise StoreError("the SQLite store is closed")

        def run() -> _T:
            connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
            if connection is None:
                connection = _connect(self.path, readonly=True)
                self._local.connection = connection
                with self._lock:
                    self._read_connections.append(connection)
            return work(connection)

        return await self._run(self._readers, run)

    async def _run(self, pool: ThreadPoolExecutor, work: Callable[[], _T]) -> _T:
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, work)
        except RuntimeError as error:  # the executor was shut down by a concurrent close()
            raise StoreError("the SQLite store is closed") from error
        try:
            return await future
        except sqlite3.Error as error:
            raise StoreError(f"SQLite store failed: {error}") from error

    # -------------------------------------------------------------------- FHIR resources

    async def upsert(self, resources: Sequence[Resource]) -> UpsertResult:
        return await self._write(lambda connection: self._upsert(connection, resources))

    def _upsert(
        self, connection: sqlite3.Connection, resources: Sequence[Resource]
    ) -> UpsertResult:
        created = updated = unchanged = 0
        with _transaction(connection):
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
        row = await self._read(
            lambda connection: connection.execute(
                "SELECT type, id, version, last_updated, deleted,"
                " CASE WHEN deleted THEN x'' ELSE json END, date_start"
                " FROM resources WHERE type = ? AND id = ?",
                (resource_type, id_),
            ).fetchone()
        )
        return None if row is None else _stored(row)

    async def vread(self, resource_type: str, id_: str, version_id: int) -> StoredResource | None:
        row = await self._read(
            lambda connection: connection.execute(
                "SELECT type, id, version, last_updated, deleted, json, date_start FROM history"
                " WHERE type = ? AND id = ? AND version = ?",
                (resource_type, id_, version_id),
            ).fetchone()
        )
        return None if row is None else _stored(row)

    async def history(self, resource_type: str, id_: str) -> list[StoredResource]:
        rows = await self._read(
            lambda connection: connection.execute(
                "SELECT type, id, version, last_updated, deleted, json, date_start FROM history"
                " WHERE type = ? AND id = ? ORDER BY version DESC",
                (resource_type, id_),
            ).fetchall()
        )
        return [_stored(row) for row in rows]

    async def delete(self, resource_type: str, id_: str) -> bool:
        return await self._write(lambda connection: self._delete(connection, resource_type, id_))

    def _delete(self, connection: sqlite3.Connection, resource_type: str, id_: str) -> bool:
        with _transaction(connection):
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
        rows = await self._read(
            lambda connection: connection.execute(statement.sql, statement.params).fetchall()
        )
        resources = [_stored(row) for row in rows[: query.limit]]
        if backwards:
            resources.reverse()
        return Page(resources=resources, more=len(rows) > query.limit)

    async def count(self, query: Query) -> int:
        statement = sqlite_query.count(query)
        row = await self._read(
            lambda connection: connection.execute(statement.sql, statement.params).fetchone()
        )
        return int(row[0])

    async def lastn(self, query: Query, max_per_group: int) -> list[StoredResource]:
        def newest_per_group(connection: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            # One read transaction, so every group is read from the same snapshot.
            with _transaction(connection, "BEGIN"):
                groups = sqlite_query.lastn_groups(query)
                for (code_group,) in connection.execute(groups.sql, groups.params).fetchall():
                    group = sqlite_query.lastn_group(query, code_group, max_per_group)
                    rows.extend(connection.execute(group.sql, group.params).fetchall())
            return rows

        return [_stored(row) for row in await self._read(newest_per_group)]

    # -------------------------------------------------------------------- records

    async def get_record(self, kind: str, key: str) -> Record | None:
        row = await self._read(
            lambda connection: connection.execute(
                "SELECT version, data FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        )
        return None if row is None else Record(kind, key, orjson.loads(row[1]), row[0])

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        text = orjson.dumps(data).decode()

        def compare_and_set(connection: sqlite3.Connection) -> Record:
            with _transaction(connection):
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
        rows = await self._read(
            lambda connection: connection.execute(sql, (*params, limit)).fetchall()
        )
        return [Record(kind, key, orjson.loads(data), version) for key, version, data in rows]
