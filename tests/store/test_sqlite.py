"""SQLite specifics: durability across reopen, WAL, and query plans served from indexes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fhir_gateway.errors import StoreError
from fhir_gateway.store import (
    Cursor,
    DateClause,
    Query,
    RangeBounds,
    ReferenceClause,
    Sort,
    SQLiteStore,
    TokenClause,
    TokenMatch,
    sqlite_query,
)
from tests.store import resources as fx

PATIENT = ReferenceClause("patient", ("p1",))
WEIGHT = TokenClause("code", (TokenMatch(*fx.WEIGHT),))
MAY = DateClause("date", (RangeBounds(end_gt=1714521600000000, start_lt=1717200000000000),))


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    await store.put_record("cursor", "u1", {"lastupdate": 5})
    await store.close()

    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        stored = await reopened.read("Observation", "w1")
        assert stored is not None and stored.version_id == 1
        record = await reopened.get_record("cursor", "u1")
        assert record is not None and record.data == {"lastupdate": 5}
        page = await reopened.search(Query("Observation", (PATIENT, WEIGHT)))
        assert [row.id for row in page.resources] == ["w1"]
    finally:
        await reopened.close()


async def test_closed_store_refuses_every_call(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.sqlite3")
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.read("Observation", "w1")
    with pytest.raises(StoreError):
        await store.upsert([fx.patient("p1", "Doe")])


async def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "absent" / "store.sqlite3")
    with pytest.raises(StoreError):
        await store.open()
    with pytest.raises(StoreError):
        await store.ping()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[sqlite3.Connection]:
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    await store.close()
    connection = sqlite3.connect(path)
    yield connection
    connection.close()


def plan(connection: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[str]:
    return [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def test_wal_mode_is_persistent(database: sqlite3.Connection) -> None:
    assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_patient_code_date_page_is_one_token_range_without_sorting(
    database: sqlite3.Connection,
) -> None:
    query = Query(
        "Observation",
        (PATIENT, WEIGHT, MAY),
        sort=Sort("date", descending=True),
        after=Cursor(1716000000000000, "w9"),
        limit=100,
    )
    statement, _ = sqlite_query.search(query)
    steps = plan(database, statement.sql, statement.params)
    assert steps[0].startswith(
        "SEARCH t USING PRIMARY KEY (field=? AND system=? AND code=? AND patient=? AND"
    )
    assert "date_start" in steps[0]
    assert not any("TEMP B-TREE" in step for step in steps)
    assert any("SEARCH r USING INTEGER PRIMARY KEY" in step for step in steps)


@pytest.mark.parametrize("field", ["_id", "date", "_lastUpdated"])
def test_patient_pages_in_every_sort_use_an_index_in_order(
    database: sqlite3.Connection, field: str
) -> None:
    sort = Sort(field, descending=True)  # type: ignore[arg-type]
    query = Query("Observation", (PATIENT,), sort=sort, after=Cursor(5, "w1"))
    statement, _ = sqlite_query.search(query)
    steps = plan(database, statement.sql, statement.params)
    assert steps[0].startswith("SEARCH r USING INDEX resources_by_patient_")
    assert "(type=? AND patient=?" in steps[0]
    assert not any("TEMP B-TREE" in step for step in steps)


def test_lastn_visits_groups_by_seeks_and_each_group_by_one_range(
    database: sqlite3.Connection,
) -> None:
    query = Query("Observation", (PATIENT,))
    groups = sqlite_query.lastn_groups(query)
    group_steps = plan(database, groups.sql, groups.params)
    assert any("resources_lastn (type=? AND patient=? AND code_group>?)" in s for s in group_steps)
    assert not any(step.startswith("SCAN resources") for step in group_steps)

    newest = sqlite_query.lastn_group(query, f"{fx.LOINC}|29463-7", 3)
    steps = plan(database, newest.sql, newest.params)
    assert "resources_lastn (type=? AND patient=? AND code_group=?)" in steps[0]
    assert not any("TEMP B-TREE" in step for step in steps)
