"""Query plans of the searches the FHIR edge sends most: bounded index ranges, no needless sort."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fhir_gateway.fhir.search import parse_search
from fhir_gateway.store import SQLiteStore, sqlite_query
from tests.store import resources as fx

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# The benchmark's search (bench/search_bench.py), with the default sort.
BENCH = [
    ("patient", "p1"),
    ("code", "http://loinc.org|29463-7"),
    ("date", "ge2024-03-01"),
    ("date", "lt2024-09-01"),
    ("_count", "20"),
]


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


def plan(connection: sqlite3.Connection, params: list[tuple[str, str]]) -> list[str]:
    query = parse_search("Observation", params, strict=True, now=NOW).query
    statement, _ = sqlite_query.search(query)
    return [
        row[3]
        for row in connection.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.params)
    ]


def test_ge_reads_a_range_bounded_below_although_it_is_an_or(
    database: sqlite3.Connection,
) -> None:
    # `ge` is "ends after S or lies within S": without the derived bound SQLite could only use
    # date_start < (the `lt`), reading the patient's whole history before the window.
    steps = plan(database, BENCH)
    assert "date_start>? AND date_start<?" in steps[0], steps


def test_the_default_sort_by_id_sorts_only_the_window(database: sqlite3.Connection) -> None:
    steps = plan(database, BENCH)
    assert steps[0].startswith("SEARCH t USING PRIMARY KEY (field=? AND system=? AND code=?")
    assert any("TEMP B-TREE FOR ORDER BY" in step for step in steps)  # _id: honest sort


@pytest.mark.parametrize("sort", ["-date", "date"])
def test_date_sorted_pages_come_straight_from_the_index(
    database: sqlite3.Connection, sort: str
) -> None:
    steps = plan(database, [*BENCH, ("_sort", sort)])
    assert "date_start>? AND date_start<?" in steps[0], steps
    assert not any("TEMP B-TREE" in step for step in steps), steps
