"""Persistence behind one Protocol: SQLite on one machine, MongoDB in production.

The two backends load on first use (PEP 562): pure modules import `store.base` through this
package, and must not drag in sqlite3 or pymongo (nor loop back into `fhir.indexing`).
"""

from typing import TYPE_CHECKING, Any

from fhir_gateway.store.base import (
    OPEN_END,
    OPEN_START,
    Clause,
    ComponentClause,
    ComponentKey,
    ComponentMatch,
    Cursor,
    DateClause,
    IdClause,
    JSONObject,
    NumberBounds,
    Page,
    QuantityClause,
    QuantityKey,
    QuantityMatch,
    Query,
    RangeBounds,
    Record,
    ReferenceClause,
    Resource,
    SearchIndex,
    Sort,
    SortField,
    Store,
    StoredResource,
    TokenClause,
    TokenKey,
    TokenMatch,
    UpsertResult,
    from_micros,
    to_micros,
)

if TYPE_CHECKING:
    from fhir_gateway.store.mongo import MongoStore
    from fhir_gateway.store.sqlite import SQLiteStore

__all__ = [
    "OPEN_END",
    "OPEN_START",
    "Clause",
    "ComponentClause",
    "ComponentKey",
    "ComponentMatch",
    "Cursor",
    "DateClause",
    "IdClause",
    "JSONObject",
    "MongoStore",
    "NumberBounds",
    "Page",
    "QuantityClause",
    "QuantityKey",
    "QuantityMatch",
    "Query",
    "RangeBounds",
    "Record",
    "ReferenceClause",
    "Resource",
    "SQLiteStore",
    "SearchIndex",
    "Sort",
    "SortField",
    "Store",
    "StoredResource",
    "TokenClause",
    "TokenKey",
    "TokenMatch",
    "UpsertResult",
    "from_micros",
    "to_micros",
]


def __getattr__(name: str) -> Any:
    if name == "SQLiteStore":
        from fhir_gateway.store.sqlite import SQLiteStore

        return SQLiteStore
    if name == "MongoStore":
        from fhir_gateway.store.mongo import MongoStore

        return MongoStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
