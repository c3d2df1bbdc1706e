"""MongoDB specifics: indexes, write concern, and the test-only mongomock bulk_write shim."""

from __future__ import annotations

from typing import Any

import pytest
from mongomock_motor import AsyncMongoMockClient
from pymongo import UpdateOne

from fhir_gateway.errors import StoreError
from fhir_gateway.store import MongoStore
from tests.store import resources as fx
from tests.store.conftest import YieldingDatabase


class RecordingDatabase(YieldingDatabase):
    """Remembers the options each collection was opened with (write concern)."""

    def __init__(self, database: Any) -> None:
        super().__init__(database)
        self.options: dict[str, dict[str, Any]] = {}

    def get_collection(self, name: str, **options: Any) -> Any:
        self.options[name] = options
        return super().get_collection(name, **options)


def mock_database() -> Any:
    return AsyncMongoMockClient()["fhir_gateway_test"]


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "majority"), (1, 1), ("majority", "majority")]
)
def test_write_concern_applies_to_every_collection(given: str | int | None, expected: Any) -> None:
    database = RecordingDatabase(mock_database())
    if given is None:
        MongoStore(database)
    else:
        MongoStore(database, write_concern=given)
    assert {"resources", "history", "records"} <= set(database.options)
    for options in database.options.values():
        assert options["write_concern"].document == {"w": expected}


async def test_open_creates_the_search_indexes_and_is_idempotent() -> None:
    raw = mock_database()
    store = MongoStore(raw)
    await store.open()
    await store.open()
    indexes = (await raw["resources"].index_information()).values()
    names = [tuple(name for name, _ in spec["key"]) for spec in indexes]
    assert ("type", "id") in names
    assert ("patient", "codes.s", "codes.c", "date_start", "id") in names
    assert ("patient", "categories.s", "categories.c", "date_start", "id") in names
    assert ("patient", "code_group", "date_start", "id") in names
    assert ("type", "last_updated", "id") in names
    record_indexes = (await raw["records"].index_information()).values()
    assert any(spec.get("unique") and len(spec["key"]) == 2 for spec in record_indexes)


async def test_resource_json_is_stored_as_bytes_and_returned_unchanged() -> None:
    raw = mock_database()
    store = MongoStore(raw)
    await store.open()
    await store.upsert([fx.blood_pressure("bp1", "p1", "2024-05-03T07:00:00Z", 120, 80)])
    document = await raw["resources"].find_one({"_id": "Observation/bp1"})
    stored = await store.read("Observation", "bp1")
    assert isinstance(document["json"], bytes)
    assert stored is not None and stored.json == document["json"]
    assert document["components"][0] == {
        "s": fx.LOINC,
        "c": fx.SYSTOLIC[1],
        "qv": 120.0,
        "qs": fx.UCUM,
        "qc": "mm[Hg]",
        "qu": "mmHg",
    }


async def test_closed_store_refuses_calls() -> None:
    store = MongoStore(mock_database())
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.read("Observation", "w1")
    with pytest.raises(StoreError):
        await store.upsert([fx.patient("p1", "Doe")])


async def test_bulk_write_shim_refuses_a_real_sort() -> None:
    """The conftest shim only tolerates pymongo's sort=None; a real sort must fail loudly."""
    collection = mock_database()["plain"]
    await collection.bulk_write([UpdateOne({"_id": 1}, {"$set": {"a": 1}}, upsert=True)])
    assert await collection.find_one({"_id": 1}) == {"_id": 1, "a": 1}
    with pytest.raises(NotImplementedError, match="sort"):
        await collection.bulk_write([UpdateOne({}, {"$set": {"a": 2}}, sort={"a": 1})])
