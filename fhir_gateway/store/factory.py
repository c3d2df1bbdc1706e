"""Choose the Store from Settings: MongoDB when MONGODB_URL is set, else SQLite in DATA_DIR."""

from __future__ import annotations

from typing import Any

from fhir_gateway.config import Settings
from fhir_gateway.store.base import Store

SQLITE_FILENAME = "fhir-gateway.sqlite3"


def write_concern(setting: str) -> str | int:
    """MONGODB_WRITE_CONCERN → the `w` option: 'majority' stays a string, '1' becomes 1."""
    return int(setting) if setting.isdigit() else setting


def make_store(settings: Settings) -> Store:
    """The configured Store, not yet opened (`await store.open()` connects and creates indexes)."""
    if settings.mongodb_url is not None:
        from motor.motor_asyncio import AsyncIOMotorClient

        from fhir_gateway.store.mongo import MongoStore

        # The one line to change for PyMongo's AsyncMongoClient (motor is in maintenance mode).
        client: AsyncIOMotorClient[dict[str, Any]] = AsyncIOMotorClient(settings.mongodb_url)
        return MongoStore(
            client[settings.mongodb_database],
            write_concern=write_concern(settings.mongodb_write_concern),
            owns_client=True,
        )
    from fhir_gateway.store.sqlite import SQLiteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(settings.data_dir / SQLITE_FILENAME)
