"""The query model as MongoDB filters over the index arrays embedded in each document. Pure."""

from __future__ import annotations

from typing import Any

from fhir_gateway.store.base import (
    ComponentClause,
    DateClause,
    IdClause,
    NumberBounds,
    QuantityClause,
    QuantityMatch,
    Query,
    RangeBounds,
    ReferenceClause,
    TokenClause,
    TokenMatch,
)

Filter = dict[str, Any]

TOKEN_ARRAYS = {"code": "codes", "category": "categories", "identifier": "identifiers"}
NOTHING: Filter = {"_id": {"$in": []}}


def _any_of(filters: list[Filter]) -> Filter:
    if not filters:
        return NOTHING
    return filters[0] if len(filters) == 1 else {"$or": filters}


def _token(token: TokenMatch, system: str = "s", code: str = "c") -> Filter:
    match: Filter = {}
    if token.system is not None:
        match[system] = token.system
    if token.code is not None:
        match[code] = token.code
    return match


def _number(bounds: NumberBounds) -> Filter:
    operators = {"$gte": bounds.ge, "$gt": bounds.gt, "$lte": bounds.le, "$lt": bounds.lt}
    return {operator: value for operator, value in operators.items() if value is not None}


def _quantities(match: QuantityMatch, prefix: str = "") -> list[Filter]:
    """One $elemMatch body per way to match; `code` matches the UCUM code or the unit text."""
    body: Filter = {}
    if number := _number(match.bounds):
        body[f"{prefix}v"] = number
    if match.system is not None:
        body[f"{prefix}s"] = match.system
    if match.code is None:
        return [body]
    return [body | {f"{prefix}c": match.code}, body | {f"{prefix}u": match.code}]


def _elem(array: str, body: Filter) -> Filter:
    # An empty $elemMatch matches no scalar-free array element; "has any element" is what we mean.
    return {array: {"$elemMatch": body}} if body else {f"{array}.0": {"$exists": True}}


def _date_range(bounds: RangeBounds, max_span: int) -> Filter:
    start: Filter = {}
    end: Filter = {}
    if bounds.start_ge is not None:
        start["$gte"] = bounds.start_ge
    if bounds.start_lt is not None:
        start["$lt"] = bounds.start_lt
    if bounds.end_gt is not None:
        end["$gt"] = bounds.end_gt
        # date_end > v implies date_start > v - max_span: a bound the compound index can use.
        start["$gt"] = bounds.end_gt - max_span
    if bounds.end_le is not None:
        end["$lte"] = bounds.end_le
    result: Filter = {}
    if start:
        result["date_start"] = start
    if end:
        result["date_end"] = end
    return result


def _last_updated(bounds: RangeBounds) -> Filter:
    """The target range of _lastUpdated is [last_updated, last_updated + 1µs)."""
    condition: Filter = {}
    lowers = [value for value in (bounds.start_ge, bounds.end_gt) if value is not None]
    uppers = [value for value in (bounds.start_lt, bounds.end_le) if value is not None]
    if lowers:
        condition["$gte"] = max(lowers)
    if uppers:
        condition["$lt"] = min(uppers)
    return {"last_updated": condition} if condition else {}


def _clause(clause: object, max_span: int) -> Filter:
    if isinstance(clause, IdClause):
        return {"id": {"$in": list(clause.ids)}}
    if isinstance(clause, ReferenceClause):
        return {clause.field: {"$in": list(clause.ids)}}
    if isinstance(clause, TokenClause):
        array = TOKEN_ARRAYS[clause.field]
        matches = [_elem(array, _token(token)) for token in clause.tokens]
        if clause.negate:
            return {"$nor": matches} if matches else {}
        return _any_of(matches)
    if isinstance(clause, DateClause):
        if clause.field == "date":
            return _any_of([_date_range(b, max_span) for b in clause.alternatives])
        return _any_of([_last_updated(bounds) for bounds in clause.alternatives])
    if isinstance(clause, QuantityClause):
        return _any_of(
            [_elem("quantities", body) for m in clause.alternatives for body in _quantities(m)]
        )
    if isinstance(clause, ComponentClause):
        return _any_of(
            [
                _elem("components", _token(match.token) | body)
                for match in clause.alternatives
                for body in _quantities(match.quantity, prefix="q")
            ]
        )
    raise TypeError(f"unknown clause {clause!r}")  # pragma: no cover - the union is closed


def match(query: Query, max_span: int) -> Filter:
    """The filter for current, non-deleted resources matching every clause of `query`."""
    conditions: list[Filter] = [{"type": query.resource_type}, {"deleted": False}]
    conditions += [_clause(clause, max_span) for clause in query.clauses]
    return {"$and": [condition for condition in conditions if condition]}


SORT_FIELDS = {"_id": "id", "date": "date_start", "_lastUpdated": "last_updated"}


def keyset(sort_field: str, value: int | str, id_: str, descending: bool) -> Filter:
    """Rows strictly after (value, id) in (sort_field, id) order."""
    operator = "$lt" if descending else "$gt"
    if sort_field == "id":
        return {"id": {operator: id_}}
    # The inclusive bound on sort_field alone is what the index range uses; the $or breaks ties.
    inclusive = "$lte" if descending else "$gte"
    return {
        sort_field: {inclusive: value},
        "$or": [{sort_field: {operator: value}}, {"id": {operator: id_}}],
    }


def single_patient(query: Query) -> str | None:
    for clause in query.clauses:
        if isinstance(clause, ReferenceClause) and clause.field == "patient":
            if len(clause.ids) == 1:
                return clause.ids[0]
    return None
