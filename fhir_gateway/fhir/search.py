"""FHIR search parameters → the backend-neutral Query (store/base.py), plus paging cursors. Pure.

FHIR R4 search (search.html): a repeated parameter ANDs, a comma inside one value ORs, `\\,`
`\\|` `\\$` `\\\\` escape (§3.1.1.6). Unknown or unsupported parameters are ignored and
reported unless the client asked for `Prefer: handling=strict` (§3.1.1.3).

Choices this module makes where the spec leaves room:
- `_sort` honours one key: further keys are dropped with a warning (strict: 400).
- Result parameters other than `_include` may appear once; a repeat is a syntax error.
- A reference to a type we never hold as that parameter's target (`subject=Group/1`) is a 400.
- Quantities: `ap` is ±10 % of the number, but never narrower than the number's own precision.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, TypeAlias, TypeVar

import orjson

from fhir_gateway.errors import InvalidSearch, UnknownSearchParameter
from fhir_gateway.fhir.registry import (
    LASTN_MAX_LIMIT,
    ResourceSearch,
    resource_search,
)
from fhir_gateway.fhir.search_values import checked_id, clause, invalid, reads_clock, show
from fhir_gateway.store.base import (
    OPEN_END,
    OPEN_START,
    Clause,
    Cursor,
    IdClause,
    Query,
    ReferenceClause,
    Sort,
    SortField,
    TokenClause,
)

Total: TypeAlias = Literal["none", "estimate", "accurate"]
Direction: TypeAlias = Literal["next", "prev"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 datatypes §2.24.0.1 `id`
_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]{0,63}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_HISTORY_SUFFIX = re.compile(r"/_history/[^/]*$")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,512}")
_UNESCAPE = re.compile(r"\\([,|$\\])")
_RESULT_NAMES = ("_count", "_sort", "_total", "_summary", "_elements", "_include", "_page")
_FORMAT = "_format"  # content negotiation: the HTTP layer's job, accepted silently here
_STALE_CURSOR = "stale or malformed paging cursor in _page"
_SORT_FIELDS: dict[str, SortField] = {"_id": "_id", "date": "date", "_lastUpdated": "_lastUpdated"}
_TOTALS: dict[str, Total] = {"none": "none", "estimate": "estimate", "accurate": "accurate"}


@dataclass(frozen=True, slots=True)
class ParsedSearch:
    """A search request, validated. `warnings` excludes the `ignored` names (reported apart)."""

    query: Query
    count: int
    total: Total = "none"
    summary_count: bool = False
    elements: tuple[str, ...] | None = None
    includes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # What was applied, for the Bundle `self` link (FHIR R4 search §3.1.1.3): no ignored
    # parameters, no `_page`, `_format`; clamped `_count` and single `_sort` as applied.
    self_params: tuple[tuple[str, str], ...] = ()
    # True when the query depends on `now` (an `ap` date): the same request can mean another
    # query a moment later, so its answer must not be reused.
    uses_clock: bool = False


@dataclass(frozen=True, slots=True)
class ParsedLastN:
    """An `Observation/$lastn` request (FHIR R4 observation-operation-lastn)."""

    query: Query
    max_per_group: int
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    self_params: tuple[tuple[str, str], ...] = ()


Parsed = TypeVar("Parsed", ParsedSearch, ParsedLastN)


# ---------------------------------------------------------------- paging cursors


def _sort_text(sort: Sort) -> str:
    return ("-" if sort.descending else "") + sort.field


def encode_cursor(direction: Direction, sort: Sort, cursor: Cursor) -> str:
    """An opaque `_page` value: base64url (unpadded) of compact JSON, e.g. {"d":"next",...}."""
    payload = {"d": direction, "s": _sort_text(sort), "v": cursor.value, "i": cursor.id}
    # orjson writes the same compact JSON as json.dumps(separators=(",", ":")) for these
    # ASCII-only values (FHIR ids, sort names, integers), at a tenth of the cost.
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode("ascii")


def _decode_cursor(text: str, sort: Sort) -> tuple[Direction, Cursor]:
    """The inverse of encode_cursor; anything unexpected, or another sort, is InvalidSearch."""
    if _CURSOR_TEXT.fullmatch(text) is None:
        raise InvalidSearch(_STALE_CURSOR)
    try:
        payload = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, RecursionError):  # binascii, UTF-8 and JSON errors are ValueErrors
        raise InvalidSearch(_STALE_CURSOR) from None
    if not isinstance(payload, dict) or set(payload) != {"d", "s", "v", "i"}:
        raise InvalidSearch(_STALE_CURSOR)
    direction, value, id_ = payload["d"], payload["v"], payload["i"]
    if sort.field == "_id":
        valid_value = isinstance(value, str) and value == id_
    else:
        valid_value = type(value) is int and OPEN_START <= value <= OPEN_END
    if (
        direction not in ("next", "prev")
        or payload["s"] != _sort_text(sort)
        or not valid_value
        or not isinstance(id_, str)
        or _ID.fullmatch(id_) is None
    ):
        raise InvalidSearch(_STALE_CURSOR)
    return ("next" if direction == "next" else "prev"), Cursor(value, id_)


# ---------------------------------------------------------------- the parser


class _Parser:
    """Accumulates one request's clauses, result settings and messages, in request order."""

    def __init__(self, spec: ResourceSearch, strict: bool, now: datetime) -> None:
        self.spec = spec
        self.strict = strict
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.clauses: list[Clause] = []
        self.ignored: list[str] = []
        self.warnings: list[str] = []
        self.self_params: list[tuple[str, str]] = []
        self.result_values: dict[str, str] = {}
        self.includes: list[str] = []
        self.uses_clock = False

    def unsupported(self, label: str, why: str) -> None:
        if self.strict:
            raise UnknownSearchParameter(
                f"search parameter {show(label)} is not supported on "
                f"{self.spec.resource_type}: {why}"
            )
        self.ignored.append(label)

    def feed(self, params: Sequence[tuple[str, str]], results: Sequence[str]) -> None:
        """Filter parameters become clauses; the result parameters named in `results` are kept."""
        for raw_name, value in params:
            if value == "" or raw_name == _FORMAT:
                continue  # FHIR R4 search §3.1.1.3: empty parameters are ignored
            name, colon, modifier = raw_name.partition(":")
            if name in _RESULT_NAMES and name in results:
                self.result(raw_name, name, bool(colon), value)
                continue
            param = self.spec.parameter(name)
            if param is None:
                self.unsupported(raw_name, "unknown parameter")
            elif colon and modifier not in param.modifiers:
                self.unsupported(raw_name, f"modifier {show(modifier)} is not supported")
            else:
                self.clauses.append(clause(param, modifier, value, self.now))
                self.self_params.append((raw_name, value))
                self.uses_clock = self.uses_clock or reads_clock(param, value)

    def result(self, raw_name: str, name: str, has_modifier: bool, value: str) -> None:
        if has_modifier:
            self.unsupported(raw_name, "result parameters take no modifier")
        elif name == "_include":
            if value in self.spec.includes:
                if value not in self.includes:
                    self.includes.append(value)
                    self.self_params.append((name, value))
            else:
                self.unsupported(f"_include={value[:80]}", "not a supported _include value")
        elif name in self.result_values:
            raise invalid(name, value, "the parameter may appear only once")
        else:
            self.result_values[name] = value

    def count(self, default: int, maximum: int) -> int:
        text = self.result_values.get("_count")
        if text is None:
            return min(default, maximum)
        if not text.isascii() or not text.isdigit():
            raise invalid("_count", text, "expected a non-negative integer")
        count = _bounded_int(text, maximum + 1)
        if count > maximum:
            self.warnings.append(f"_count={show(text)} exceeds the maximum; {maximum} used")
            count = maximum
        self.self_params.append(("_count", str(count)))
        return count

    def sort(self) -> Sort:
        text = self.result_values.get("_sort")
        if text is None:
            return Sort()
        first, *rest = text.split(",")
        field = first.removeprefix("-")
        if not field:
            raise invalid("_sort", text, "expected [-]key[,[-]key...]")
        sort_field = _SORT_FIELDS.get(field)
        if sort_field is None or sort_field not in self.spec.sort_fields:
            self.unsupported(f"_sort={text[:80]}", f"{show(field)} is not a sort key of this type")
            return Sort()
        if rest:
            if self.strict:
                raise UnknownSearchParameter(f"_sort={show(text)}: only one sort key is supported")
            self.warnings.append(f"_sort={show(text)}: only the first key {show(first)} is used")
        sort = Sort(sort_field, descending=first.startswith("-"))
        self.self_params.append(("_sort", _sort_text(sort)))
        return sort

    def total(self) -> Total:
        text = self.result_values.get("_total")
        if text is None:
            return "none"
        if text not in _TOTALS:
            raise invalid("_total", text, "expected none, estimate or accurate")
        self.self_params.append(("_total", text))
        return _TOTALS[text]

    def summary_count(self) -> bool:
        text = self.result_values.get("_summary")
        if text is None:
            return False
        if text in ("true", "text", "data"):
            self.unsupported(f"_summary={text}", "only _summary=count and false are supported")
            return False
        if text not in ("count", "false"):
            raise invalid("_summary", text, "expected true, text, data, count or false")
        self.self_params.append(("_summary", text))
        return text == "count"

    def elements(self) -> tuple[str, ...] | None:
        text = self.result_values.get("_elements")
        if text is None:
            return None
        names = tuple(dict.fromkeys(item.strip() for item in text.split(",")))
        for name in names:
            if _ELEMENT.fullmatch(name) is None:
                raise invalid("_elements", text, f"{show(name)} is not an element name")
        self.self_params.append(("_elements", ",".join(names)))
        return names


def _bounded_int(digits: str, ceiling: int) -> int:
    """ASCII digits as an int no larger than `ceiling` (int() refuses > 4300 digits)."""
    significant = digits.lstrip("0") or "0"
    return min(int(significant), ceiling) if len(significant) <= 18 else ceiling


def _spec(resource_type: str) -> ResourceSearch:
    spec = resource_search(resource_type)
    if spec is None:
        raise InvalidSearch(f"resource type {show(resource_type)} is not searchable here")
    return spec


def parse_search(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    now: datetime,
    default_count: int = 50,
    max_count: int = 1000,
) -> ParsedSearch:
    """Validate a type-level search; `strict` is `Prefer: handling=strict`."""
    parser = _Parser(_spec(resource_type), strict, now)
    parser.feed(params, _RESULT_NAMES)
    count = parser.count(default_count, max_count)
    sort = parser.sort()
    total = parser.total()
    summary_count = parser.summary_count() or count == 0
    elements = parser.elements()
    after = before = None
    if (page := parser.result_values.get("_page")) is not None:
        direction, cursor = _decode_cursor(page, sort)
        after, before = (cursor, None) if direction == "next" else (None, cursor)
    query = Query(resource_type, tuple(parser.clauses), sort, after, before, limit=count)
    return ParsedSearch(
        query=query,
        count=count,
        total=total,
        summary_count=summary_count,
        elements=elements,
        includes=tuple(parser.includes),
        ignored=tuple(parser.ignored),
        warnings=tuple(parser.warnings),
        self_params=tuple(parser.self_params),
        uses_clock=parser.uses_clock,
    )


def parse_lastn(params: Sequence[tuple[str, str]], *, strict: bool, now: datetime) -> ParsedLastN:
    """Validate `Observation/$lastn`: patient or subject, plus category and/or code; `max`."""
    parser = _Parser(_spec("Observation"), strict, now)
    maxima = [value for name, value in params if name == "max" and value != ""]
    parser.feed([(name, value) for name, value in params if name != "max"], results=())
    clauses = parser.clauses
    if not any(isinstance(c, ReferenceClause) and c.field == "patient" for c in clauses):
        raise InvalidSearch("$lastn needs a patient or subject parameter")
    if not any(isinstance(c, TokenClause) and c.field in ("code", "category") for c in clauses):
        raise InvalidSearch("$lastn needs a category or code parameter")
    if len(maxima) > 1:
        raise invalid("max", maxima[1], "the parameter may appear only once")
    max_per_group = 1
    if maxima:
        text = maxima[0]
        if not text.isascii() or not text.isdigit() or not text.strip("0"):
            raise invalid("max", text, "expected a positive integer")
        max_per_group = _bounded_int(text, LASTN_MAX_LIMIT + 1)
        if max_per_group > LASTN_MAX_LIMIT:
            parser.warnings.append(f"max={show(text)} exceeds the maximum; {LASTN_MAX_LIMIT} used")
            max_per_group = LASTN_MAX_LIMIT
        parser.self_params.append(("max", str(max_per_group)))
    return ParsedLastN(
        query=Query("Observation", tuple(parser.clauses)),
        max_per_group=max_per_group,
        ignored=tuple(parser.ignored),
        warnings=tuple(parser.warnings),
        self_params=tuple(parser.self_params),
    )


def restrict_to_patient(parsed: Parsed, patient_id: str) -> Parsed:
    """AND the query with one Patient's compartment (a patient-scoped access token)."""
    spec = _spec(parsed.query.resource_type)
    checked_id("patient", patient_id, patient_id)
    compartment: Clause = (
        IdClause((patient_id,))
        if spec.patient_compartment == "_id"
        else ReferenceClause("patient", (patient_id,))
    )
    query = replace(parsed.query, clauses=(*parsed.query.clauses, compartment))
    return replace(parsed, query=query)
