"""What every backend does the same way on write: content hashes, version stamps, timestamps."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson

from fhir_gateway.store.base import (
    OPEN_END,
    OPEN_START,
    Resource,
    SearchIndex,
    from_micros,
    to_micros,
)

# A span bound larger than any gap between a date and OPEN_START: with it, the pruning bound
# `date_start > v - max_span` excludes nothing (see SQLiteStore and MongoStore date clauses).
UNBOUNDED_SPAN = 3 * 2**61


def content_hash(resource: Resource) -> str:
    """Hash of the resource without meta.versionId/lastUpdated: equal hash = unchanged content."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        rest = {
            key: value for key, value in meta.items() if key not in {"versionId", "lastUpdated"}
        }
        resource = {**resource, "meta": rest} if rest else _without_meta(resource)
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _without_meta(resource: Resource) -> Resource:
    return {key: value for key, value in resource.items() if key != "meta"}


def fhir_instant(micros: int) -> str:
    """UTC microseconds → FHIR instant, e.g. '2026-11-25T05:44:58.123456Z'."""
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp(resource: Resource, version: int, last_updated: int) -> bytes:
    """The stored JSON: the resource with meta.versionId/lastUpdated set, other meta kept."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = fhir_instant(last_updated)
    return orjson.dumps({**resource, "meta": meta})


def next_last_updated(previous: int | None) -> int:
    """Now in UTC microseconds, but strictly after the resource's previous lastUpdated."""
    now = to_micros(datetime.now(UTC))
    return now if previous is None or now > previous else previous + 1


def date_span(index: SearchIndex) -> int:
    """date_end - date_start, or UNBOUNDED_SPAN when either end is open."""
    if index.date_start == OPEN_START or index.date_end == OPEN_END:
        return UNBOUNDED_SPAN
    return max(0, index.date_end - index.date_start)
