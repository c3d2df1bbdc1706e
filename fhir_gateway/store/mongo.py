"""The production Store on MongoDB, through the collection API common to motor and PyMongo's
AsyncMongoClient (find, find_one, distinct, insert_one, update_one, find_one_and_update,
delete_one, bulk_write, count_documents, create_index, command).

Switching from motor to `pymongo.AsyncMongoClient` is one line: the client built in
`fhir_gateway/store/factory.py` (`make_store`). Nothing here awaits a cursor constructor
(`aggregate` differs between the two, so it is not used) or calls `to_list`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import ReturnDocument, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from fhir_gateway.errors import StoreError, VersionConflict
from fhir_gateway.fhir.indexing import search_index
from fhir_gateway.store import mongo_query
from fhir_gateway.store.base import (
    DateClause,
    JSONObject,
    Page,
    Query,
    Record,
    Resource,
    StoredResource,
    UpsertResult,
    from_micros,
)
from fhir_gateway.store.versioning import (
    UNBOUNDED_SPAN,
    content_hash,
    date_span,
    next_last_updated,
    stamp,
)

DUPLICATE_KEY = 11000
# A conditional write that loses a race is retried from a fresh read; this bounds pathologies.
MAX_ATTEMPTS = 50
_SUMMARY_FIELDS = ("type", "id", "version", "last_updated", "deleted", "date_start")
_STORED_FIELDS = (*_SUMMARY_FIELDS, "json")


def _projection(fields: Sequence[str]) -> dict[str, int]:
    # A fresh dict per call: mongomock adds keys to the projection it is given.
    return dict.fromkeys(fields, 1)


def _stored(document: Mapping[str, Any]) -> StoredResource:
    return StoredResource(
        resource_type=document["type"],
        id=document["id"],
        version_id=document["version"],
        last_updated=from_micros(document["last_updated"]),
        deleted=document["deleted"],
        json=b"" if document["deleted"] else bytes(document["json"]),
        date_start=document["date_start"],
    )


def _document(resource: Resource, version: int, last_updated: int, digest: str) -> dict[str, Any]:
    index = search_index(resource)

    def tokens(keys: Sequence[Any]) -> list[dict[str, str]]:
        return [{"s": key.system, "c": key.code} for key in keys]

    return {
        "type": resource["resourceType"],
        "id": resource["id"],
        "version": version,
        "last_updated": last_updated,
        "deleted": False,
        "hash": digest,
        "json": stamp(resource, version, last_updated),
        "patient": index.patient,
        "device": index.device,
        "date_start": index.date_start,
        "date_end": index.date_end,
        "code_group": index.code_group,
        "codes": tokens(index.codes),
        "categories": tokens(index.categories),
        "identifiers": tokens(index.identifiers),
        "quantities": [
            {"v": q.value, "s": q.system, "c": q.code, "u": q.unit} for q in index.quantities
        ],
        "components": [
            {"s": c.token.system, "c": c.token.code, "qv": c.quantity.value}
            | {"qs": c.quantity.system, "qc": c.quantity.code, "qu": c.quantity.unit}
            for c in index.components
        ],
        "span": date_span(index),
    }


class MongoStore:
    """Resources (current, `_id` "Type/id"), their history, and versioned records."""

    def __init__(
        self, database: Any, *, write_concern: str | int = "majority", owns_client: bool = False
    ) -> None:
        concern = WriteConcern(w=write_concern)
        self._database = database
        self._owns_client = owns_client
        self._resources = database.get_collection("resources", write_concern=concern)
        self._history = database.get_collection("history", write_concern=concern)
        self._records = database.get_collection("records", write_concern=concern)
        self._bounds = database.get_collection("bounds", write_concern=concern)
        self._open = False
        self._closed = False

    # -------------------------------------------------------------------- plumbing

    async def open(self) -> None:
        if self._open:
            return
        self._check()
        try:
            await self._resources.create_index([("type", 1), ("id", 1)], unique=True)
            # id ends each compound index so that (date_start, id) sorts need no in-memory sort.
            for key in ("codes", "categories"):
                await self._resources.create_index(
                    [("patient", 1), (f"{key}.s", 1), (f"{key}.c", 1), ("date_start", 1), ("id", 1)]
                )
            await self._resources.create_index(
                [("patient", 1), ("code_group", 1), ("date_start", -1), ("id", -1)]
            )
            await self._resources.create_index([("type", 1), ("last_updated", 1), ("id", 1)])
            await self._resources.create_index([("type", 1), ("date_start", 1), ("id", 1)])
            await self._resources.create_index([("identifiers.s", 1), ("identifiers.c", 1)])
            await self._history.create_index([("type", 1), ("id", 1), ("version", -1)])
            await self._records.create_index([("kind", 1), ("key", 1)], unique=True)
        except PyMongoError as error:
            raise StoreError(f"MongoDB store could not open: {type(error).__name__}") from error
        self._open = True

    async def close(self) -> None:
        self._closed = True
        if self._owns_client:
            # motor's close() is synchronous, AsyncMongoClient's is a coroutine.
            closing = self._database.client.close()
            if inspect.isawaitable(closing):
                await closing

    async def ping(self) -> None:
        self._check()
        try:
            await self._database.command("ping")
        except PyMongoError as error:
            raise StoreError(f"MongoDB is unreachable: {type(error).__name__}") from error

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the MongoDB store is closed")

    async def _max_span(self, query: Query) -> int:
        needs_bound = any(
            isinstance(clause, DateClause)
            and clause.field == "date"
            and any(bounds.end_gt is not None for bounds in clause.alternatives)
            for clause in query.clauses
        )
        if not needs_bound:
            return UNBOUNDED_SPAN
        bound = await self._bounds.find_one({"_id": "date_span"})
        return 0 if bound is None else int(bound["max_span"])

    # -------------------------------------------------------------------- FHIR resources

    async def upsert(self, resources: Sequence[Resource]) -> UpsertResult:
        self._check()
        totals = {"created": 0, "updated": 0, "unchanged": 0}
        # A resource repeated in one batch is written in order, one occurrence per round.
        rounds: list[dict[str, Resource]] = []
        for resource in resources:
            key = f"{resource['resourceType']}/{resource['id']}"
            target = next((batch for batch in rounds if key not in batch), None)
            if target is None:
                target = {}
                rounds.append(target)
            target[key] = resource
        try:
            for batch in rounds:
                for outcome, count in (await self._upsert_round(batch)).items():
                    totals[outcome] += count
        except PyMongoError as error:
            raise StoreError(f"MongoDB upsert failed: {type(error).__name__}") from error
        return UpsertResult(**totals)

    async def _upsert_round(self, pending: dict[str, Resource]) -> dict[str, int]:
        totals = {"created": 0, "updated": 0, "unchanged": 0}
        for _ in range(MAX_ATTEMPTS):
            current = {
                document["_id"]: document
                async for document in self._resources.find(
                    {"_id": {"$in": list(pending)}},
                    {"version": 1, "last_updated": 1, "deleted": 1, "hash": 1},
                )
            }
            writes: list[tuple[str, bool, dict[str, Any]]] = []
            for key, resource in pending.items():
                digest = content_hash(resource)
                previous = current.get(key)
                if previous is not None and not previous["deleted"] and previous["hash"] == digest:
                    totals["unchanged"] += 1
                    continue
                version = 1 if previous is None else previous["version"] + 1
                last_updated = next_last_updated(
                    None if previous is None else previous["last_updated"]
                )
                writes.append(
                    (key, previous is None, _document(resource, version, last_updated, digest))
                )
            if not writes:
                return totals
            await self._raise_span(max(document["span"] for _, _, document in writes))
            # Conditional on the version we read: a concurrent writer makes the filter miss, the
            # upsert then collides with the unique _id (E11000) and we retry from a fresh read.
            operations = [
                UpdateOne(
                    {"_id": key, "version": document["version"] - 1}
                    if not created
                    else {"_id": key, "version": {"$exists": False}},
                    {"$set": document},
                    upsert=True,
                )
                for key, created, document in writes
            ]
            lost = await self._bulk_write(self._resources, operations)
            won = [write for index, write in enumerate(writes) if index not in lost]
            if won:
                await self._bulk_write(
                    self._history,
                    [
                        UpdateOne(
                            {"_id": f"{key}/_history/{document['version']}"},
                            {"$setOnInsert": {field: document[field] for field in _STORED_FIELDS}},
                            upsert=True,
                        )
                        for key, _, document in won
                    ],
                )
            for _, created, _ in won:
                totals["created" if created else "updated"] += 1
            pending = {
                key: pending[key] for index, (key, _, _) in enumerate(writes) if index in lost
            }
            if not pending:
                return totals
        raise StoreError("MongoDB upsert kept conflicting with concurrent writers")

    @staticmethod
    async def _bulk_write(collection: Any, operations: list[UpdateOne]) -> set[int]:
        """Run unordered; return the indexes that lost a race (duplicate key), raise on others."""
        try:
            await collection.bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if any(entry.get("code") != DUPLICATE_KEY for entry in errors):
                raise
            return {entry["index"] for entry in errors}
        return set()

    async def _raise_span(self, span: int) -> None:
        """Widen the stored date-span bound before writing a resource that needs it."""
        await self._bounds.update_one(
            {"_id": "date_span"}, {"$max": {"max_span": span}}, upsert=True
        )

    async def read(self, resource_type: str, id_: str) -> StoredResource | None:
        self._check()
        document = await self._resources.find_one(
            {"_id": f"{resource_type}/{id_}"}, _projection(_STORED_FIELDS)
        )
        return None if document is None else _stored(document)

    async def vread(self, resource_type: str, id_: str, version_id: int) -> StoredResource | None:
        self._check()
        document = await self._history.find_one(
            {"_id": f"{resource_type}/{id_}/_history/{version_id}"}
        )
        return None if document is None else _stored(document)

    async def history(self, resource_type: str, id_: str) -> list[StoredResource]:
        self._check()
        cursor = self._history.find({"type": resource_type, "id": id_}).sort("version", -1)
        return [_stored(document) async for document in cursor]

    async def delete(self, resource_type: str, id_: str) -> bool:
        self._check()
        key = f"{resource_type}/{id_}"
        for _ in range(MAX_ATTEMPTS):
            current = await self._resources.find_one({"_id": key}, _projection(_SUMMARY_FIELDS))
            if current is None or current["deleted"]:
                return False
            version = current["version"] + 1
            last_updated = next_last_updated(current["last_updated"])
            # Conditional on the version read, like upsert: a concurrent write means retry.
            result = await self._resources.update_one(
                {"_id": key, "version": current["version"]},
                {"$set": {"version": version, "last_updated": last_updated, "deleted": True}},
            )
            if result.matched_count == 1:
                marker = {
                    "type": resource_type,
                    "id": id_,
                    "version": version,
                    "last_updated": last_updated,
                    "deleted": True,
                    "json": b"",
                    "date_start": current["date_start"],
                }
                await self._history.update_one(
                    {"_id": f"{key}/_history/{version}"}, {"$setOnInsert": marker}, upsert=True
                )
                return True
        raise StoreError("MongoDB delete kept conflicting with concurrent writers")

    async def search(self, query: Query) -> Page:
        self._check()
        sort_field = mongo_query.SORT_FIELDS[query.sort.field]
        backwards = query.before is not None
        descending = query.sort.descending != backwards
        conditions = mongo_query.match(query, await self._max_span(query))
        cursor = query.before if query.before is not None else query.after
        if cursor is not None:
            conditions["$and"].append(
                mongo_query.keyset(sort_field, cursor.value, cursor.id, descending)
            )
        direction = -1 if descending else 1
        order = [(sort_field, direction)] + ([("id", direction)] if sort_field != "id" else [])
        found = (
            self._resources.find(conditions, _projection(_STORED_FIELDS))
            .sort(order)
            .limit(query.limit + 1)
        )
        documents = [document async for document in found]
        resources = [_stored(document) for document in documents[: query.limit]]
        if backwards:
            resources.reverse()
        return Page(resources=resources, more=len(documents) > query.limit)

    async def count(self, query: Query) -> int:
        self._check()
        conditions = mongo_query.match(query, await self._max_span(query))
        return int(await self._resources.count_documents(conditions))

    async def lastn(self, query: Query, max_per_group: int) -> list[StoredResource]:
        """Distinct code groups, then one sorted, limited query per group (index-served)."""
        self._check()
        conditions = mongo_query.match(query, await self._max_span(query))
        patient = mongo_query.single_patient(query)
        # With one patient, distinct on the (patient, code_group, …) index prefix alone is a
        # DISTINCT_SCAN (one seek per group); each group's query then applies every clause.
        scope = {"patient": patient} if patient is not None else conditions
        groups = await self._resources.distinct("code_group", scope)
        newest: list[StoredResource] = []
        for code_group in sorted(group for group in groups if group is not None):
            in_group = {"$and": [*conditions["$and"], {"code_group": code_group}]}
            found = (
                self._resources.find(in_group, _projection(_STORED_FIELDS))
                .sort([("date_start", -1), ("id", -1)])
                .limit(max_per_group)
            )
            newest.extend([_stored(document) async for document in found])
        return newest

    # -------------------------------------------------------------------- records

    async def get_record(self, kind: str, key: str) -> Record | None:
        self._check()
        document = await self._records.find_one({"kind": kind, "key": key})
        return (
            None if document is None else Record(kind, key, document["data"], document["version"])
        )

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        self._check()
        natural_key = {"kind": kind, "key": key}
        conflict = f"record {kind}/{key} is not at version {expected_version}"
        if expected_version == 0:
            try:
                await self._records.insert_one({**natural_key, "data": data, "version": 1})
            except DuplicateKeyError as error:
                raise VersionConflict(conflict) from error
            return Record(kind, key, data, 1)
        selector = (
            natural_key if expected_version is None else natural_key | {"version": expected_version}
        )
        change = {"$set": {"data": data}, "$inc": {"version": 1}}
        for _ in range(2):
            try:
                document = await self._records.find_one_and_update(
                    selector,
                    change,
                    upsert=expected_version is None,
                    return_document=ReturnDocument.AFTER,
                )
                break
            except DuplicateKeyError:
                # Two unconditional upserts of a new key race on the unique index; the loser
                # retries once as an update of the row the winner created.
                continue
        else:
            raise StoreError(f"record {kind}/{key} could not be written")
        if document is None:
            raise VersionConflict(conflict)
        return Record(kind, key, document["data"], document["version"])

    async def delete_record(self, kind: str, key: str) -> bool:
        self._check()
        result = await self._records.delete_one({"kind": kind, "key": key})
        return bool(result.deleted_count)

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]:
        self._check()
        conditions: dict[str, Any] = {"kind": kind}
        for name, value in (where or {}).items():
            # BSON equality is typed, except that int and bool differ only by type: pin it.
            kind_of = (
                "bool"
                if isinstance(value, bool)
                else "string"
                if isinstance(value, str)
                else "number"
            )
            conditions[f"data.{name}"] = {"$eq": value, "$type": kind_of}
        found = self._records.find(conditions).sort("key", 1).limit(limit)
        return [
            Record(kind, document["key"], document["data"], document["version"])
            async for document in found
        ]
