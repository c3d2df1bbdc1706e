"""Whatever a client sends, the search parser answers with a result or InvalidSearch (a 400).

Anything else would surface as a 500. Hypothesis feeds names and values built from the pieces
that make the grammar interesting: prefixes, `|` `$` `,` `\\`, unicode, huge and non-finite
numbers, impossible dates, and cursors both genuine and forged.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from hypothesis import event, given, settings
from hypothesis import strategies as st

from fhir_gateway.errors import InvalidSearch
from fhir_gateway.fhir.dates import PREFIXES
from fhir_gateway.fhir.registry import RESOURCES
from fhir_gateway.fhir.search import (
    ParsedLastN,
    ParsedSearch,
    encode_cursor,
    parse_lastn,
    parse_search,
)
from fhir_gateway.store.base import OPEN_END, OPEN_START, Cursor, Sort

NOW = datetime(2024, 6, 1, tzinfo=UTC)
MAX_COUNT = 1000

KNOWN_NAMES = sorted(
    {p.name for spec in RESOURCES.values() for p in spec.parameters}
    | {"_count", "_sort", "_total", "_summary", "_elements", "_include", "_format", "_page"}
    | {"max", "status", "foo"}
)
MODIFIERS = ["", ":not", ":text", ":Patient", ":Device", ":missing", ":iterate", ":"]

names = st.one_of(
    st.builds(lambda n, m: n + m, st.sampled_from(KNOWN_NAMES), st.sampled_from(MODIFIERS)),
    st.text(max_size=12),
)

pieces = st.one_of(
    st.sampled_from(
        ["|", "$", ",", "\\", "\\,", "\\|", "\\$", "\\\\", "-", ".", ":", "/", "T", "Z", "e"]
    ),
    st.sampled_from(PREFIXES),
    st.sampled_from(["NaN", "nan", "inf", "-inf", "Infinity", "1e999999", "1e-999999", "9" * 400]),
    st.sampled_from(
        ["2024", "-05", "-13", "-29", "T23:59", ":60", ".123456789", "+14:00", "-99:99"]
    ),
    st.sampled_from(
        ["0000", "9999-12-31T23:59-14:00", "0001-01-01T00:00+14:00", "Patient/", "Group/"]
    ),
    st.sampled_from(["count", "true", "accurate", "date", "-_id", "Observation:patient", "p1"]),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
values = st.one_of(st.lists(pieces, max_size=8).map("".join), st.text(max_size=30))

cursor_values = st.one_of(
    st.integers(min_value=OPEN_START, max_value=OPEN_END),
    st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
)
ids = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)
sorts = st.builds(Sort, st.sampled_from(["_id", "date", "_lastUpdated"]), st.booleans())
forged_pages = st.one_of(
    st.binary(max_size=80).map(lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")),
    st.builds(
        encode_cursor,
        st.sampled_from(["next", "prev"]),
        sorts,
        st.builds(Cursor, cursor_values, ids),
    ),
    st.text(max_size=40),
)


def escaped(text: str) -> str:
    """FHIR R4 search §3.1.1.6: a literal , | $ or \\ inside a value is written with a backslash."""
    return "".join("\\" + char if char in ",|$\\" else char for char in text)


codes = st.text(alphabet="ab1-|,$\\é", min_size=1, max_size=5).map(escaped)
systems = st.sampled_from(["", "http://loinc.org", "urn:x|y"]).map(escaped)
tokens = st.one_of(codes, st.builds(lambda s, c: f"{s}|{c}", systems, codes))
tokens_or_system = st.one_of(tokens, systems.filter(bool).map(lambda s: s + "|"))
numbers = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["1e2", "1.0e2", "0.000", "-0", "5.4"]),
)
quantities = st.builds(
    lambda prefix, number, unit: prefix + number + unit,
    st.sampled_from(["", *PREFIXES]),
    numbers,
    st.sampled_from(["", "||kg", "|http://unitsofmeasure.org|mm[Hg]", "|x|"]),
)
moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
)
date_formats = [
    "%Y",
    "%Y-%m",
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
]
dates = st.builds(
    lambda prefix, moment, form, zone: (
        prefix + f"{moment.year:04d}" + moment.strftime(form)[4:] + (zone if "T" in form else "")
    ),
    st.sampled_from(["", *PREFIXES]),
    moments,
    st.sampled_from(date_formats),
    st.sampled_from(["", "Z", "+14:00", "-05:00", "+05:30"]),
)
references = st.builds(
    lambda form, id_: form.format(id_),
    st.sampled_from(["{}", "Patient/{}", "https://x.org/fhir/Patient/{}/_history/1", "Device/{}"]),
    ids,
)
WELL_FORMED = {
    "code": tokens_or_system,
    "category": tokens,
    "identifier": tokens,
    "code:not": tokens,
    "_id": ids,
    "date": dates,
    "_lastUpdated": st.lists(dates, min_size=1, max_size=3).map(",".join),
    "patient": references,
    "subject": references,
    "device": references,
    "value-quantity": st.lists(quantities, min_size=1, max_size=3).map(",".join),
    "component-code-value-quantity": st.builds(lambda t, q: f"{t}${q}", tokens, quantities),
    "_count": st.integers(0, 2000).map(str),
    "_sort": st.sampled_from(["date", "-date", "_id", "-_id", "_lastUpdated", "code", "date,_id"]),
    "_total": st.sampled_from(["none", "estimate", "accurate"]),
    "_summary": st.sampled_from(["count", "false", "true"]),
    "_elements": st.lists(st.sampled_from(["code", "subject", "valueQuantity"]), min_size=1).map(
        ",".join
    ),
    "_include": st.sampled_from(["Observation:patient", "Observation:device", "Observation:x"]),
    "max": st.integers(0, 200).map(str),
}
well_formed = st.sampled_from(sorted(WELL_FORMED)).flatmap(
    lambda name: st.tuples(st.just(name), WELL_FORMED[name])
)
params = st.lists(
    st.one_of(
        well_formed,
        well_formed,
        st.tuples(names, values),
        st.tuples(st.just("_page"), forged_pages),
    ),
    max_size=8,
)


def check_search(parsed: ParsedSearch, strict: bool, sent: list[tuple[str, str]]) -> None:
    assert 0 <= parsed.count <= MAX_COUNT and parsed.query.limit == parsed.count
    assert parsed.summary_count or parsed.count > 0
    assert not (strict and parsed.ignored)
    sent_names = {name for name, _ in sent}
    for name, _ in parsed.self_params:
        assert name in sent_names and name not in ("_page", "_format")
    assert parsed.query.after is None or parsed.query.before is None


@settings(max_examples=500, deadline=None)
@given(type_=st.sampled_from(sorted(RESOURCES)), sent=params, strict=st.booleans())
def test_parse_search_answers_or_raises_invalid_search(
    type_: str, sent: list[tuple[str, str]], strict: bool
) -> None:
    try:
        parsed = parse_search(type_, sent, strict=strict, now=NOW, max_count=MAX_COUNT)
    except InvalidSearch as error:
        event(f"refused: {type(error).__name__}")
        return
    event("parsed")
    check_search(parsed, strict, sent)


@settings(max_examples=300, deadline=None)
@given(
    type_=st.sampled_from(sorted(RESOURCES)),
    sent=st.lists(st.one_of(well_formed, well_formed, well_formed, st.tuples(names, values))),
)
def test_the_self_link_reproduces_the_search(type_: str, sent: list[tuple[str, str]]) -> None:
    """Following `self` (strictly, even) gives the same query, minus the page cursor."""
    try:
        parsed = parse_search(type_, sent, strict=False, now=NOW)
    except InvalidSearch as error:
        event(f"refused: {type(error).__name__}")
        return
    event("parsed")
    again = parse_search(type_, list(parsed.self_params), strict=True, now=NOW)
    assert again.query.clauses == parsed.query.clauses
    assert (again.query.sort, again.count, again.total) == (
        parsed.query.sort,
        parsed.count,
        parsed.total,
    )
    assert (again.summary_count, again.elements, again.includes) == (
        parsed.summary_count,
        parsed.elements,
        parsed.includes,
    )
    assert again.self_params == parsed.self_params


@settings(max_examples=500, deadline=None)
@given(
    sent=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(["patient", "subject", "code", "category", "max"]), values),
            st.tuples(st.sampled_from(["patient", "subject"]), references),
            st.tuples(st.sampled_from(["code", "category"]), tokens),
            well_formed,
            st.tuples(names, values),
        ),
        max_size=6,
    ),
    strict=st.booleans(),
)
def test_parse_lastn_answers_or_raises_invalid_search(
    sent: list[tuple[str, str]], strict: bool
) -> None:
    try:
        parsed = parse_lastn(sent, strict=strict, now=NOW)
    except InvalidSearch as error:
        event(f"refused: {type(error).__name__}")
        return
    event("parsed")
    assert isinstance(parsed, ParsedLastN)
    assert 1 <= parsed.max_per_group <= 100
    assert not (strict and parsed.ignored)


@settings(max_examples=200, deadline=None)
@given(
    direction=st.sampled_from(["next", "prev"]),
    sort=sorts,
    position=st.builds(Cursor, cursor_values, ids),
)
def test_cursors_round_trip(direction: str, sort: Sort, position: Cursor) -> None:
    if sort.field == "_id":
        position = Cursor(position.id, position.id)
    elif not isinstance(position.value, int):
        position = Cursor(0, position.id)
    page = encode_cursor(direction, sort, position)  # type: ignore[arg-type]
    sort_text = ("-" if sort.descending else "") + sort.field
    sort_params = [("_sort", sort_text)] if sort.field in ("date", "_lastUpdated", "_id") else []
    parsed = parse_search("Observation", [*sort_params, ("_page", page)], strict=True, now=NOW)
    found = parsed.query.after if direction == "next" else parsed.query.before
    assert found == position
