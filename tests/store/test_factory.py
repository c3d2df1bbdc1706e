"""make_store picks the backend from Settings; nothing here touches the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_gateway.config import Settings
from fhir_gateway.store import MongoStore, SQLiteStore
from fhir_gateway.store.factory import SQLITE_FILENAME, make_store, write_concern
from tests.store import resources as fx


async def test_without_mongodb_url_the_store_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    store = make_store(Settings(data_dir=data_dir))
    assert isinstance(store, SQLiteStore)
    assert store.path == data_dir / SQLITE_FILENAME
    await store.open()
    try:
        await store.upsert([fx.patient("p1", "Doe")])
    finally:
        await store.close()
    assert (data_dir / SQLITE_FILENAME).is_file()


async def test_with_mongodb_url_the_store_is_mongo_and_not_yet_connected(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "unused",
        mongodb_url="mongodb://127.0.0.1:1",
        mongodb_database="gateway_db",
        mongodb_write_concern="2",
    )
    store = make_store(settings)
    assert isinstance(store, MongoStore)
    assert not (tmp_path / "unused").exists()
    await store.close()  # closes the client it owns, without ever having connected


@pytest.mark.parametrize(("setting", "expected"), [("majority", "majority"), ("1", 1), ("3", 3)])
def test_write_concern_setting(setting: str, expected: str | int) -> None:
    assert write_concern(setting) == expected
