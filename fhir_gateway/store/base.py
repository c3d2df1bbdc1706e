"""The Store seam: a Protocol, the backend-neutral query model, and the records it returns.

Every search parameter is translated by the pure FHIR core (`fhir/search.py`) into clauses that
a backend evaluates with plain comparisons on indexed columns, so SQLite and MongoDB share one
meaning. Clauses are ANDed; the alternatives inside one clause are ORed (FHIR R4 search §3.1.1.2:
repeated parameter = AND, comma = OR).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeAlias

Resource: TypeAlias = dict[str, Any]
JSONObject: TypeAlias = dict[str, Any]

# Open ends of a Period and "no date" map to these microsecond sentinels, so that range
# comparisons need no special cases in any backend (both fit in SQLite INTEGER and BSON int64).
OPEN_START = -(2**62)
OPEN_END = 2**62
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- what a resource contributes


@dataclass(frozen=True, slots=True)
class TokenKey:
    """One indexed coding/identifier. `system` is "" when the source has none."""

    system: str
    code: str


@dataclass(frozen=True, slots=True)
class QuantityKey:
    value: float
    system: str
    code: str
    unit: str


@dataclass(frozen=True, slots=True)
class ComponentKey:
    token: TokenKey
    quantity: QuantityKey


@dataclass(frozen=True, slots=True)
class SearchIndex:
    """The searchable facts of one resource, extracted once on write (`fhir/indexing.py`)."""

    patient: str | None = None
    device: str | None = None
    codes: tuple[TokenKey, ...] = ()
    categories: tuple[TokenKey, ...] = ()
    identifiers: tuple[TokenKey, ...] = ()
    # effective[x] as [date_start, date_end) in UTC microseconds; OPEN_* for open/missing ends.
    date_start: int = OPEN_START
    date_end: int = OPEN_END
    quantities: tuple[QuantityKey, ...] = ()
    components: tuple[ComponentKey, ...] = ()
    # "system|code" of the first coding of Observation.code: the $lastn grouping key.
    code_group: str | None = None


# ---------------------------------------------------------------- the query model


@dataclass(frozen=True, slots=True)
class TokenMatch:
    """`system` None = any system, "" = no system; `code` None = any code in the system."""

    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class RangeBounds:
    """Conditions on a target range [start, end) in UTC microseconds; None = no condition.

    Every FHIR date prefix becomes one or two of these (see `fhir/dates.py`).
    """

    start_ge: int | None = None
    start_lt: int | None = None
    end_gt: int | None = None
    end_le: int | None = None


@dataclass(frozen=True, slots=True)
class NumberBounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None


@dataclass(frozen=True, slots=True)
class QuantityMatch:
    """`system` None = any; `code` None = any, else matches the UCUM code or the unit text."""

    bounds: NumberBounds
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class ComponentMatch:
    token: TokenMatch
    quantity: QuantityMatch


@dataclass(frozen=True, slots=True)
class IdClause:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReferenceClause:
    field: Literal["patient", "device"]
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenClause:
    """`negate`: FHIR `:not` — resources with no matching token, including those with none."""

    field: Literal["code", "category", "identifier"]
    tokens: tuple[TokenMatch, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class DateClause:
    field: Literal["date", "lastUpdated"]
    alternatives: tuple[RangeBounds, ...]


@dataclass(frozen=True, slots=True)
class QuantityClause:
    alternatives: tuple[QuantityMatch, ...]


@dataclass(frozen=True, slots=True)
class ComponentClause:
    """component-code-value-quantity: one component must satisfy both halves of an alternative."""

    alternatives: tuple[ComponentMatch, ...]


Clause: TypeAlias = (
    IdClause | ReferenceClause | TokenClause | DateClause | QuantityClause | ComponentClause
)

SortField: TypeAlias = Literal["_id", "date", "_lastUpdated"]


@dataclass(frozen=True, slots=True)
class Sort:
    field: SortField = "_id"
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """Keyset position: the sort value and id of the last (or first) row of a page.

    `value` is microseconds for date/_lastUpdated, the id itself for _id.
    """

    value: int | str
    id: str


@dataclass(frozen=True, slots=True)
class Query:
    resource_type: str
    clauses: tuple[Clause, ...] = ()
    sort: Sort = field(default_factory=Sort)
    # Rows strictly after `after` in sort order; or, for a previous page, strictly before `before`.
    after: Cursor | None = None
    before: Cursor | None = None
    limit: int = 50


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime  # UTC, microsecond precision
    deleted: bool
    # The resource's JSON with meta.versionId/lastUpdated set; b"" for a deletion marker.
    json: bytes
    # Sort values, so that paging can build cursors without parsing `json`.
    date_start: int = OPEN_START

    def sort_value(self, sort_field: SortField) -> int | str:
        if sort_field == "date":
            return self.date_start
        if sort_field == "_lastUpdated":
            return to_micros(self.last_updated)
        return self.id


@dataclass(frozen=True, slots=True)
class Page:
    """Rows in the requested order; `more` tells whether rows exist beyond the last one."""

    resources: list[StoredResource]
    more: bool


@dataclass(frozen=True, slots=True)
class UpsertResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """A non-FHIR record (tokens, cursors, inbox …), versioned for compare-and-set."""

    kind: str
    key: str
    data: JSONObject
    version: int


def to_micros(moment: datetime) -> int:
    """UTC datetime → integer microseconds since the epoch (exact, no float rounding)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class Store(Protocol):
    """Persistence for FHIR resources (versioned) and ingestion records (compare-and-set)."""

    async def open(self) -> None:
        """Connect and create indexes/tables; idempotent."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError when the backend is unreachable (readiness probe)."""

    # FHIR resources -------------------------------------------------------------------------
    async def upsert(self, resources: Sequence[Resource]) -> UpsertResult:
        """Insert or update by (resourceType, id); a version is created only when content changes.

        Resources must already be validated. `meta.versionId`/`meta.lastUpdated` are set here.
        A deleted resource that is upserted again comes back as a new version.
        """

    async def read(self, resource_type: str, id_: str) -> StoredResource | None:
        """Current version, or a deletion marker (`deleted=True`), or None if never stored."""

    async def vread(
        self, resource_type: str, id_: str, version_id: int
    ) -> StoredResource | None: ...

    async def history(self, resource_type: str, id_: str) -> list[StoredResource]:
        """Every version, newest first, deletion markers included."""

    async def delete(self, resource_type: str, id_: str) -> bool:
        """Mark deleted (a new history entry). False if absent or already deleted."""

    async def search(self, query: Query) -> Page: ...

    async def count(self, query: Query) -> int:
        """Exact number of current, non-deleted matches (cursor and limit ignored)."""

    async def lastn(self, query: Query, max_per_group: int) -> list[StoredResource]:
        """Per Observation code group, the `max_per_group` most recent matches by date.

        Groups in code_group order, newest first within a group.
        """

    # Ingestion records -------------------------------------------------------------------------
    async def get_record(self, kind: str, key: str) -> Record | None: ...

    async def put_record(
        self, kind: str, key: str, data: JSONObject, *, expected_version: int | None = None
    ) -> Record:
        """Write a record. `expected_version` None = unconditional; 0 = must not exist;
        n = must currently be at version n. Raise VersionConflict otherwise."""

    async def delete_record(self, kind: str, key: str) -> bool: ...

    async def list_records(
        self, kind: str, *, where: Mapping[str, str | int | bool] | None = None, limit: int = 1000
    ) -> list[Record]:
        """Records of a kind whose top-level data fields equal `where`, oldest key first."""
