"""Search parameters → Query, table by table (FHIR R4 search §3.1.1), plus cursors and $lastn."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_gateway.errors import InvalidSearch, UnknownSearchParameter
from fhir_gateway.fhir.registry import (
    RESOURCES,
    RESULT_PARAMETERS,
    resource_search,
    searchable_types,
)
from fhir_gateway.fhir.search import (
    ParsedSearch,
    encode_cursor,
    parse_lastn,
    parse_search,
    restrict_to_patient,
)
from fhir_gateway.store.base import (
    ComponentClause,
    ComponentMatch,
    Cursor,
    DateClause,
    IdClause,
    NumberBounds,
    QuantityClause,
    QuantityMatch,
    RangeBounds,
    ReferenceClause,
    Sort,
    TokenClause,
    TokenMatch,
    to_micros,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def parse(
    *params: tuple[str, str], type_: str = "Observation", strict: bool = False
) -> ParsedSearch:
    return parse_search(type_, list(params), strict=strict, now=NOW)


def utc(text: str) -> int:
    return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))


def b64(payload: Any) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---------------------------------------------------------------- tokens

TOKENS = [
    ("29463-7", (TokenMatch(None, "29463-7"),)),
    (f"{LOINC}|29463-7", (TokenMatch(LOINC, "29463-7"),)),
    ("|local-1", (TokenMatch("", "local-1"),)),  # explicitly no system
    (f"{LOINC}|", (TokenMatch(LOINC, None),)),  # any code in the system
    ("a,b", (TokenMatch(None, "a"), TokenMatch(None, "b"))),
    (f"{LOINC}|a,|b", (TokenMatch(LOINC, "a"), TokenMatch("", "b"))),
    # §3.1.1.6 escapes: \, \| \$ \\ ; an unknown escape keeps its backslash.
    ("a\\,b", (TokenMatch(None, "a,b"),)),
    ("s\\|x|c", (TokenMatch("s|x", "c"),)),
    ("a\\$b", (TokenMatch(None, "a$b"),)),
    ("a\\\\,b", (TokenMatch(None, "a\\"), TokenMatch(None, "b"))),
    ("a\\nb", (TokenMatch(None, "a\\nb"),)),
    ("a\\", (TokenMatch(None, "a\\"),)),
    ("ünï|cödé", (TokenMatch("ünï", "cödé"),)),
]


@pytest.mark.parametrize("name", ["code", "category", "identifier"])
@pytest.mark.parametrize(("value", "tokens"), TOKENS)
def test_token_forms(name: str, value: str, tokens: tuple[TokenMatch, ...]) -> None:
    parsed = parse((name, value), strict=True)
    assert parsed.query.clauses == (TokenClause(name, tokens),)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["a|b|c", "|", "a,,b", ",a", "a,", "a\\||b|c"])
def test_token_syntax_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="code"):
        parse(("code", value))


@pytest.mark.parametrize(
    ("name", "field"),
    [("code:not", "code"), ("category:not", "category"), ("identifier:not", "identifier")],
)
def test_not_modifier_negates(name: str, field: str) -> None:
    parsed = parse((name, f"{LOINC}|a,b"), strict=True)
    tokens = (TokenMatch(LOINC, "a"), TokenMatch(None, "b"))
    assert parsed.query.clauses == (TokenClause(field, tokens, negate=True),)  # type: ignore[arg-type]
    assert parsed.self_params == ((name, f"{LOINC}|a,b"),)


@pytest.mark.parametrize(
    "name", ["code:text", "code:in", "code:below", "code:missing", "code:", "_id:not"]
)
def test_unsupported_modifiers_are_ignored_or_refused(name: str) -> None:
    lenient = parse((name, "x"), ("code", "y"))
    assert lenient.ignored == (name,)
    assert lenient.query.clauses == (TokenClause("code", (TokenMatch(None, "y"),)),)
    assert lenient.self_params == (("code", "y"),)
    with pytest.raises(UnknownSearchParameter, match="not supported"):
        parse((name, "x"), strict=True)


def test_repeated_parameters_and_commas_or() -> None:
    parsed = parse(("code", "a,b"), ("code", "c"), strict=True)
    assert parsed.query.clauses == (
        TokenClause("code", (TokenMatch(None, "a"), TokenMatch(None, "b"))),
        TokenClause("code", (TokenMatch(None, "c"),)),
    )


# ---------------------------------------------------------------- references and ids

REFERENCES = [
    ("Observation", "patient", "123", "patient", ("123",)),
    ("Observation", "patient", "Patient/123", "patient", ("123",)),
    ("Observation", "patient", "https://example.org/fhir/Patient/123", "patient", ("123",)),
    ("Observation", "patient", "https://ex.org/fhir/Patient/123/_history/4", "patient", ("123",)),
    ("Observation", "patient", "1,Patient/2", "patient", ("1", "2")),
    ("Observation", "subject", "Patient/123", "patient", ("123",)),
    ("Observation", "subject", "123", "patient", ("123",)),
    ("Observation", "subject:Patient", "123", "patient", ("123",)),
    ("Observation", "patient:Patient", "Patient/a-b.c", "patient", ("a-b.c",)),
    ("Observation", "device", "Device/d1", "device", ("d1",)),
    ("Observation", "device:Device", "d1", "device", ("d1",)),
    ("Device", "patient", "Patient/p1", "patient", ("p1",)),
]


@pytest.mark.parametrize(("type_", "name", "value", "field", "ids"), REFERENCES)
def test_reference_forms(
    type_: str, name: str, value: str, field: str, ids: tuple[str, ...]
) -> None:
    parsed = parse((name, value), type_=type_, strict=True)
    assert parsed.query.clauses == (ReferenceClause(field, ids),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("subject", "Group/1"),  # only Patient subjects are held here
        ("patient", "Device/1"),
        ("device", "Patient/1"),
        ("subject:Patient", "Group/1"),
        ("patient", "Patient/"),
        ("patient", "patient/1"),
        ("patient", "a b"),
        ("patient", "x" * 65),
        ("patient", "1,,2"),
        ("patient", "Patient/1/extra"),
        ("_id", "a b"),
        ("_id", "a,,b"),
        ("_id", "a/b"),
    ],
)
def test_reference_and_id_errors(name: str, value: str) -> None:
    with pytest.raises(InvalidSearch, match=name.partition(":")[0]):
        parse((name, value))


@pytest.mark.parametrize("name", ["subject:Group", "patient:missing", "patient:identifier"])
def test_unsupported_reference_modifiers(name: str) -> None:
    assert parse((name, "1")).ignored == (name,)


@pytest.mark.parametrize("type_", ["Observation", "Patient", "Device"])
def test_id_is_an_id_clause_on_every_type(type_: str) -> None:
    parsed = parse(("_id", "a,b-1"), type_=type_, strict=True)
    assert parsed.query.clauses == (IdClause(("a", "b-1")),)


# ---------------------------------------------------------------- dates

DAY_START, DAY_END = utc("2024-01-01T00:00:00Z"), utc("2024-01-02T00:00:00Z")
DATES = [
    ("2024-01-01", (RangeBounds(start_ge=DAY_START, end_le=DAY_END),)),
    ("eq2024-01-01", (RangeBounds(start_ge=DAY_START, end_le=DAY_END),)),
    ("ne2024-01-01", (RangeBounds(start_lt=DAY_START), RangeBounds(end_gt=DAY_END))),
    ("gt2024-01-01", (RangeBounds(end_gt=DAY_END),)),
    ("lt2024-01-01", (RangeBounds(start_lt=DAY_START),)),
    (
        "ge2024-01-01",
        (RangeBounds(end_gt=DAY_END), RangeBounds(start_ge=DAY_START, end_le=DAY_END)),
    ),
    (
        "le2024-01-01",
        (RangeBounds(start_lt=DAY_START), RangeBounds(start_ge=DAY_START, end_le=DAY_END)),
    ),
    ("sa2024-01-01", (RangeBounds(start_ge=DAY_END),)),
    ("eb2024-01-01", (RangeBounds(end_le=DAY_START),)),
    # ap: ~5 months before NOW, so 10 % of the gap (about 15 days) widens the day.
    (
        "ap2024-01-01",
        (
            RangeBounds(
                start_lt=DAY_END + (utc("2024-06-01T00:00:00Z") - (DAY_START + DAY_END) // 2) // 10,
                end_gt=DAY_START - (utc("2024-06-01T00:00:00Z") - (DAY_START + DAY_END) // 2) // 10,
            ),
        ),
    ),
    (
        "lt2024-01-01,gt2024-01-01",
        (RangeBounds(start_lt=DAY_START), RangeBounds(end_gt=DAY_END)),
    ),
    (
        "gt2024-01-01T10:00:00+02:00",
        (RangeBounds(end_gt=utc("2024-01-01T08:00:01Z")),),
    ),
    ("lt2024-01-01T10:00", (RangeBounds(start_lt=utc("2024-01-01T10:00:00Z")),)),
]


@pytest.mark.parametrize(("name", "field"), [("date", "date"), ("_lastUpdated", "lastUpdated")])
@pytest.mark.parametrize(("value", "alternatives"), DATES)
def test_date_forms(
    name: str, field: str, value: str, alternatives: tuple[RangeBounds, ...]
) -> None:
    parsed = parse((name, value), strict=True)
    assert parsed.query.clauses == (DateClause(field, alternatives),)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["foo", "ge", "2024,", "ge2024-13", "ge2024-02-30", "xx2024", "2024-01-01T25:00Z", "2024 "],
)
def test_date_syntax_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="date"):
        parse(("date", value))


def test_date_modifiers_are_unsupported() -> None:
    assert parse(("date:missing", "true")).ignored == ("date:missing",)


# ---------------------------------------------------------------- quantities


def eq(low: float, high: float) -> NumberBounds:
    return NumberBounds(ge=low, lt=high)


QUANTITIES = [
    # The number's significant figures imply a range (§3.1.1.4.1).
    ("5.4", (QuantityMatch(eq(5.35, 5.45)),)),
    ("100", (QuantityMatch(eq(99.5, 100.5)),)),
    ("1e2", (QuantityMatch(eq(50, 150)),)),  # one significant figure
    ("1.0e2", (QuantityMatch(eq(95, 105)),)),  # two
    ("0.1", (QuantityMatch(eq(0.05, 0.15)),)),
    ("-3", (QuantityMatch(eq(-3.5, -2.5)),)),
    ("eq72", (QuantityMatch(eq(71.5, 72.5)),)),
    ("ne72", (QuantityMatch(NumberBounds(lt=71.5)), QuantityMatch(NumberBounds(ge=72.5)))),
    ("gt72", (QuantityMatch(NumberBounds(gt=72)),)),
    ("sa72", (QuantityMatch(NumberBounds(gt=72)),)),
    ("lt72", (QuantityMatch(NumberBounds(lt=72)),)),
    ("eb72", (QuantityMatch(NumberBounds(lt=72)),)),
    ("ge72.5", (QuantityMatch(NumberBounds(ge=72.5)),)),
    ("le72.5", (QuantityMatch(NumberBounds(le=72.5)),)),
    ("ap100", (QuantityMatch(NumberBounds(ge=90, le=110)),)),
    ("ap0", (QuantityMatch(NumberBounds(ge=-0.5, le=0.5)),)),  # never narrower than precision
    (f"gt70|{UCUM}|kg", (QuantityMatch(NumberBounds(gt=70), UCUM, "kg"),)),
    ("5.4||mg", (QuantityMatch(eq(5.35, 5.45), None, "mg"),)),
    (f"5.4|{UCUM}|", (QuantityMatch(eq(5.35, 5.45), UCUM, None),)),
    ("72|a\\|b|kg", (QuantityMatch(eq(71.5, 72.5), "a|b", "kg"),)),
    ("72,gt80", (QuantityMatch(eq(71.5, 72.5)), QuantityMatch(NumberBounds(gt=80)))),
]


@pytest.mark.parametrize(("value", "alternatives"), QUANTITIES)
def test_quantity_forms(value: str, alternatives: tuple[QuantityMatch, ...]) -> None:
    parsed = parse(("value-quantity", value), strict=True)
    assert parsed.query.clauses == (QuantityClause(alternatives),)


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "5.4|mg",
        "5.4|a|b|c",
        "1e",
        ".",
        "-",
        "NaN",
        "inf",
        "Infinity",
        "1e400",
        "1e-400",
        "+5",
        "0x10",
        "1_000",
        " 5",
        "gt",
        "5,,6",
        "５",
        "gtgt5",
    ],
)
def test_quantity_syntax_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="value-quantity") as error:
        parse(("value-quantity", value))
    assert repr(value)[1:-1][:20] in str(error.value)


COMPONENTS = [
    (
        f"{LOINC}|8480-6$gt140",
        (ComponentMatch(TokenMatch(LOINC, "8480-6"), QuantityMatch(NumberBounds(gt=140))),),
    ),
    ("8480-6$140", (ComponentMatch(TokenMatch(None, "8480-6"), QuantityMatch(eq(139.5, 140.5))),)),
    (
        "a$ne5",
        (
            ComponentMatch(TokenMatch(None, "a"), QuantityMatch(NumberBounds(lt=4.5))),
            ComponentMatch(TokenMatch(None, "a"), QuantityMatch(NumberBounds(ge=5.5))),
        ),
    ),
    (
        f"a$1,b$2|{UCUM}|mm[Hg]",
        (
            ComponentMatch(TokenMatch(None, "a"), QuantityMatch(eq(0.5, 1.5))),
            ComponentMatch(TokenMatch(None, "b"), QuantityMatch(eq(1.5, 2.5), UCUM, "mm[Hg]")),
        ),
    ),
    ("a\\$b$3", (ComponentMatch(TokenMatch(None, "a$b"), QuantityMatch(eq(2.5, 3.5))),)),
]


@pytest.mark.parametrize(("value", "alternatives"), COMPONENTS)
def test_component_code_value_quantity(
    value: str, alternatives: tuple[ComponentMatch, ...]
) -> None:
    parsed = parse(("component-code-value-quantity", value), strict=True)
    assert parsed.query.clauses == (ComponentClause(alternatives),)


@pytest.mark.parametrize("value", ["8480-6", "a$b$c", "$5", "a$", "a$x", "a|b|c$5"])
def test_component_syntax_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="component-code-value-quantity"):
        parse(("component-code-value-quantity", value))


# ---------------------------------------------------------------- result parameters


@pytest.mark.parametrize(
    ("value", "count", "summary", "warned"),
    [
        ("10", 10, False, False),
        ("0", 0, True, False),  # §3.1.1.5.5: _count=0 is _summary=count
        ("1000", 1000, False, False),
        ("1001", 1000, False, True),
        ("9" * 5000, 1000, False, True),
        ("0005", 5, False, False),
    ],
)
def test_count(value: str, count: int, summary: bool, warned: bool) -> None:
    parsed = parse(("_count", value), strict=True)
    assert (parsed.count, parsed.query.limit, parsed.summary_count) == (count, count, summary)
    assert bool(parsed.warnings) is warned
    assert parsed.self_params == (("_count", str(count)),)


def test_count_default_and_custom_limits() -> None:
    parsed = parse()
    assert (parsed.count, parsed.query.limit, parsed.self_params) == (50, 50, ())
    custom = parse_search(
        "Observation", [("_count", "500")], strict=False, now=NOW, default_count=20, max_count=100
    )
    assert custom.count == 100 and custom.warnings
    assert parse_search("Patient", [], strict=False, now=NOW, default_count=20).count == 20


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "+5", "٣", "1e3"])
def test_count_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="_count"):
        parse(("_count", value))


@pytest.mark.parametrize(
    ("value", "sort"),
    [
        ("date", Sort("date")),
        ("-date", Sort("date", descending=True)),
        ("_lastUpdated", Sort("_lastUpdated")),
        ("-_lastUpdated", Sort("_lastUpdated", descending=True)),
        ("_id", Sort("_id")),
        ("-_id", Sort("_id", descending=True)),
    ],
)
def test_sort_keys(value: str, sort: Sort) -> None:
    parsed = parse(("_sort", value), strict=True)
    assert parsed.query.sort == sort
    assert parsed.self_params == (("_sort", value),)


def test_default_sort_is_id_ascending() -> None:
    assert parse().query.sort == Sort("_id", descending=False)


def test_only_the_first_sort_key_is_honoured() -> None:
    parsed = parse(("_sort", "-date,_id"))
    assert parsed.query.sort == Sort("date", descending=True)
    assert parsed.self_params == (("_sort", "-date"),)
    assert any("first key" in warning for warning in parsed.warnings)
    with pytest.raises(UnknownSearchParameter, match="one sort key"):
        parse(("_sort", "-date,_id"), strict=True)


@pytest.mark.parametrize(("type_", "value"), [("Observation", "code"), ("Patient", "date")])
def test_unsupported_sort_keys(type_: str, value: str) -> None:
    parsed = parse(("_sort", value), type_=type_)
    assert (parsed.query.sort, parsed.ignored, parsed.self_params) == (
        Sort(),
        (f"_sort={value}",),
        (),
    )
    with pytest.raises(UnknownSearchParameter):
        parse(("_sort", value), type_=type_, strict=True)


@pytest.mark.parametrize("value", [",date", "-", "-,date"])
def test_sort_syntax_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="_sort"):
        parse(("_sort", value))


@pytest.mark.parametrize("value", ["none", "estimate", "accurate"])
def test_total(value: str) -> None:
    parsed = parse(("_total", value), strict=True)
    assert parsed.total == value and parsed.self_params == (("_total", value),)


def test_total_default_and_errors() -> None:
    assert parse().total == "none"
    with pytest.raises(InvalidSearch, match="_total"):
        parse(("_total", "exact"))


def test_summary() -> None:
    assert parse(("_summary", "count"), strict=True).summary_count
    no_op = parse(("_summary", "false"), strict=True)
    assert not no_op.summary_count and no_op.self_params == (("_summary", "false"),)
    with pytest.raises(InvalidSearch, match="_summary"):
        parse(("_summary", "maybe"))


@pytest.mark.parametrize("value", ["true", "text", "data"])
def test_unsupported_summary_modes(value: str) -> None:
    parsed = parse(("_summary", value))
    assert (parsed.summary_count, parsed.ignored, parsed.self_params) == (
        False,
        (f"_summary={value}",),
        (),
    )
    with pytest.raises(UnknownSearchParameter):
        parse(("_summary", value), strict=True)


@pytest.mark.parametrize(
    ("value", "elements"),
    [
        ("code", ("code",)),
        ("code,subject,valueQuantity", ("code", "subject", "valueQuantity")),
        ("code, code ,effectiveDateTime", ("code", "effectiveDateTime")),
    ],
)
def test_elements(value: str, elements: tuple[str, ...]) -> None:
    parsed = parse(("_elements", value), strict=True)
    assert parsed.elements == elements
    assert parsed.self_params == (("_elements", ",".join(elements)),)


@pytest.mark.parametrize("value", ["Code", "code,", "1x", "code.coding", "_id", "cöde", ","])
def test_elements_errors(value: str) -> None:
    with pytest.raises(InvalidSearch, match="_elements"):
        parse(("_elements", value))


def test_elements_default_is_everything() -> None:
    assert parse().elements is None


def test_includes() -> None:
    parsed = parse(
        ("_include", "Observation:patient"),
        ("_include", "Observation:device"),
        ("_include", "Observation:patient"),
        strict=True,
    )
    assert parsed.includes == ("Observation:patient", "Observation:device")
    assert parsed.self_params == (
        ("_include", "Observation:patient"),
        ("_include", "Observation:device"),
    )


@pytest.mark.parametrize(
    ("type_", "name", "value", "label"),
    [
        ("Observation", "_include", "Observation:subject", "_include=Observation:subject"),
        ("Observation", "_include", "*", "_include=*"),
        ("Patient", "_include", "Observation:patient", "_include=Observation:patient"),
        ("Observation", "_include:iterate", "Observation:patient", "_include:iterate"),
    ],
)
def test_unsupported_includes(type_: str, name: str, value: str, label: str) -> None:
    parsed = parse((name, value), type_=type_)
    assert (parsed.includes, parsed.ignored, parsed.self_params) == ((), (label,), ())
    with pytest.raises(UnknownSearchParameter):
        parse((name, value), type_=type_, strict=True)


def test_format_is_left_to_the_http_layer() -> None:
    parsed = parse(("_format", "json"), ("code", "a"), strict=True)
    assert parsed.ignored == () and parsed.self_params == (("code", "a"),)


@pytest.mark.parametrize("name", ["_count", "_sort", "_total", "_summary", "_elements", "_page"])
def test_result_parameters_may_appear_once(name: str) -> None:
    value = {"_sort": "date", "_total": "none", "_summary": "count", "_elements": "code"}
    with pytest.raises(InvalidSearch, match="only once"):
        parse((name, value.get(name, "1")), (name, value.get(name, "1")))


# ---------------------------------------------------------------- unknown, empty, strict


@pytest.mark.parametrize(
    "name",
    [
        "foo",
        "status",
        "code-value-quantity",
        "patient.name",
        "_has:Observation:patient:code",
        "_revinclude",
        "_pretty",
        "",
        "ünknown",
    ],
)
def test_unknown_parameters(name: str) -> None:
    parsed = parse((name, "x"), ("code", "a"))
    assert parsed.ignored == (name,)
    assert parsed.self_params == (("code", "a"),)
    assert len(parsed.query.clauses) == 1
    with pytest.raises(UnknownSearchParameter) as error:
        parse((name, "x"), ("code", "a"), strict=True)
    assert error.value.status == 400 and error.value.issue_code == "not-supported"


@pytest.mark.parametrize("type_", ["Patient", "Device"])
def test_observation_parameters_are_unknown_on_other_types(type_: str) -> None:
    assert parse(("code", "a"), ("date", "2024"), type_=type_).ignored == ("code", "date")


@pytest.mark.parametrize("name", ["code", "foo", "_count", "_sort", "date", "_page"])
def test_empty_values_are_ignored_even_when_strict(name: str) -> None:
    parsed = parse((name, ""), strict=True)
    assert (parsed.query.clauses, parsed.ignored, parsed.self_params) == ((), (), ())


def test_unknown_resource_type() -> None:
    with pytest.raises(InvalidSearch, match="Medication"):
        parse_search("Medication", [], strict=False, now=NOW)


def test_naive_now_is_read_as_utc() -> None:
    naive = parse_search(
        "Observation", [("date", "ap2024")], strict=True, now=NOW.replace(tzinfo=None)
    )
    assert naive.query == parse(("date", "ap2024")).query


def test_self_params_keep_request_order_and_drop_what_was_not_applied() -> None:
    parsed = parse(
        ("_count", "5000"),
        ("subject:Patient", "p1"),
        ("foo", "bar"),
        ("code", f"{LOINC}|29463-7,{LOINC}|8867-4"),
        ("_page", encode_cursor("next", Sort("date", True), Cursor(7, "w1"))),
        ("_format", "json"),
        ("_sort", "-date,_id"),
        ("date", "ge2024-01-01"),
        ("code:text", "weight"),
        ("_include", "Observation:patient"),
        ("_total", "accurate"),
    )
    assert parsed.self_params == (
        ("subject:Patient", "p1"),
        ("code", f"{LOINC}|29463-7,{LOINC}|8867-4"),
        ("date", "ge2024-01-01"),
        ("_include", "Observation:patient"),
        ("_count", "1000"),
        ("_sort", "-date"),
        ("_total", "accurate"),
    )
    assert parsed.ignored == ("foo", "code:text")
    assert len(parsed.warnings) == 2  # _count clamped, second sort key dropped
    assert parsed.query.after == Cursor(7, "w1") and parsed.query.limit == 1000


def test_errors_name_the_parameter_and_value() -> None:
    with pytest.raises(InvalidSearch) as error:
        parse(("date", "ge2024-13-01"))
    assert "'date'" in str(error.value) and "ge2024-13-01" in str(error.value)


def test_long_values_are_cut_in_messages() -> None:
    with pytest.raises(InvalidSearch) as error:
        parse(("date", "x" * 10_000))
    assert len(str(error.value)) < 400


# ---------------------------------------------------------------- paging cursors

SORTS_AND_VALUES = [
    (Sort("_id"), "w1"),
    (Sort("_id", True), "w1"),
    (Sort("date"), utc("2024-05-01T08:00:00Z")),
    (Sort("date", True), -(2**62)),  # an undated resource sorts at the open start
    (Sort("_lastUpdated"), 0),
    (Sort("_lastUpdated", True), 2**62),
]


def sort_param(sort: Sort) -> tuple[str, str]:
    return ("_sort", ("-" if sort.descending else "") + sort.field)


@pytest.mark.parametrize("direction", ["next", "prev"])
@pytest.mark.parametrize(("sort", "value"), SORTS_AND_VALUES)
def test_cursor_round_trip(direction: str, sort: Sort, value: int | str) -> None:
    cursor = Cursor(value, "w1")
    page = encode_cursor(direction, sort, cursor)  # type: ignore[arg-type]
    assert page.replace("-", "").replace("_", "").isalnum() and "=" not in page
    parsed = parse(sort_param(sort), ("_page", page), strict=True)
    expected = (cursor, None) if direction == "next" else (None, cursor)
    assert (parsed.query.after, parsed.query.before) == expected
    assert ("_page", page) not in parsed.self_params


def test_cursor_is_base64url_of_compact_json() -> None:
    page = encode_cursor("prev", Sort("date", True), Cursor(5, "a"))
    assert page == b64(b'{"d":"prev","s":"-date","v":5,"i":"a"}')


def test_cursor_from_another_sort_is_stale() -> None:
    page = encode_cursor("next", Sort("date"), Cursor(5, "a"))
    for sort in [(), (("_sort", "-date"),), (("_sort", "_lastUpdated"),)]:
        with pytest.raises(InvalidSearch, match="stale or malformed paging cursor"):
            parse(*sort, ("_page", page))


GOOD = {"d": "next", "s": "date", "v": 5, "i": "a"}
TAMPERED = [
    "not a cursor",
    "x",
    "!!!!",
    page_with_padding := b64(GOOD) + "==",
    b64(GOOD) + "A",
    "A" * 600,
    b64(b"\xff\xfe\x00"),
    b64(b"not json"),
    b64(b"[" * 300),
    b64([]),
    b64(None),
    b64({**GOOD, "d": "up"}),
    b64({**GOOD, "s": "-date"}),
    b64({**GOOD, "v": "5"}),
    b64({**GOOD, "v": True}),
    b64({**GOOD, "v": 5.0}),
    b64({**GOOD, "v": 2**63}),
    b64({**GOOD, "i": 5}),
    b64({**GOOD, "i": "a b"}),
    b64({**GOOD, "i": ""}),
    b64({**GOOD, "extra": 1}),
    b64({k: v for k, v in GOOD.items() if k != "i"}),
    b64(b'{"d":"next","s":"date","v":1e999,"i":"a"}'),
]


@pytest.mark.parametrize("page", TAMPERED)
def test_tampered_cursors_are_invalid_search(page: str) -> None:
    with pytest.raises(InvalidSearch, match="stale or malformed paging cursor"):
        parse(("_sort", "date"), ("_page", page))


def test_id_sorted_cursor_must_carry_its_own_id() -> None:
    forged = b64({"d": "next", "s": "_id", "v": "b", "i": "a"})
    with pytest.raises(InvalidSearch, match="paging cursor"):
        parse(("_page", forged))


# ---------------------------------------------------------------- $lastn


def lastn(*params: tuple[str, str], strict: bool = False) -> Any:
    return parse_lastn(list(params), strict=strict, now=NOW)


@pytest.mark.parametrize(
    ("params", "max_per_group"),
    [
        ((("patient", "p1"), ("code", "a")), 1),
        ((("subject", "Patient/p1"), ("category", "vital-signs")), 1),
        ((("patient", "p1"), ("code", "a"), ("category", "b"), ("date", "ge2024")), 1),
        ((("patient", "p1"), ("code", "a"), ("max", "5")), 5),
        ((("patient", "p1"), ("code", "a"), ("max", "0005")), 5),
        ((("patient", "p1"), ("code", "a"), ("max", "100")), 100),
        ((("patient", "p1"), ("code:not", "a")), 1),
    ],
)
def test_lastn_accepts(params: tuple[tuple[str, str], ...], max_per_group: int) -> None:
    parsed = lastn(*params, strict=True)
    assert parsed.max_per_group == max_per_group
    assert parsed.query.resource_type == "Observation"
    assert ReferenceClause("patient", ("p1",)) in parsed.query.clauses
    assert parsed.warnings == ()


def test_lastn_caps_max_and_reports_it() -> None:
    parsed = lastn(("patient", "p1"), ("code", "a"), ("max", "101"))
    assert parsed.max_per_group == 100 and parsed.warnings
    assert parsed.self_params == (("patient", "p1"), ("code", "a"), ("max", "100"))
    assert lastn(("patient", "p1"), ("code", "a"), ("max", "9" * 5000)).max_per_group == 100


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ((("code", "a"),), "patient or subject"),
        ((("patient", "p1"),), "category or code"),
        ((("patient", ""), ("code", "a")), "patient or subject"),
        ((("_id", "p1"), ("code", "a")), "patient or subject"),
        ((("patient", "p1"), ("code", "a"), ("max", "0")), "max"),
        ((("patient", "p1"), ("code", "a"), ("max", "-1")), "max"),
        ((("patient", "p1"), ("code", "a"), ("max", "1.5")), "max"),
        ((("patient", "p1"), ("code", "a"), ("max", "abc")), "max"),
        ((("patient", "p1"), ("code", "a"), ("max", "1"), ("max", "2")), "once"),
        ((("patient", "Group/1"), ("code", "a")), "patient"),
    ],
)
def test_lastn_requirements(params: tuple[tuple[str, str], ...], message: str) -> None:
    with pytest.raises(InvalidSearch, match=message):
        lastn(*params)


@pytest.mark.parametrize("name", ["foo", "_count", "_sort", "_page", "_include", "max:x"])
def test_lastn_unknown_parameters(name: str) -> None:
    parsed = lastn(("patient", "p1"), ("code", "a"), (name, "1"))
    assert parsed.ignored == (name,)
    with pytest.raises(UnknownSearchParameter):
        lastn(("patient", "p1"), ("code", "a"), (name, "1"), strict=True)


# ---------------------------------------------------------------- compartment


@pytest.mark.parametrize(
    ("type_", "clause"),
    [
        ("Observation", ReferenceClause("patient", ("p1",))),
        ("Patient", IdClause(("p1",))),
        ("Device", ReferenceClause("patient", ("p1",))),
    ],
)
def test_restrict_to_patient(type_: str, clause: object) -> None:
    parsed = parse(("_id", "x"), type_=type_)
    restricted = restrict_to_patient(parsed, "p1")
    assert restricted.query.clauses == (IdClause(("x",)), clause)
    assert restricted.self_params == parsed.self_params
    assert restricted.count == parsed.count


def test_restrict_lastn_to_patient() -> None:
    parsed = lastn(("patient", "p2"), ("code", "a"))
    restricted = restrict_to_patient(parsed, "p1")
    assert restricted.query.clauses[-1] == ReferenceClause("patient", ("p1",))
    assert restricted.max_per_group == parsed.max_per_group


def test_restrict_to_a_malformed_patient_id() -> None:
    with pytest.raises(InvalidSearch):
        restrict_to_patient(parse(), "not an id")


# ---------------------------------------------------------------- registry

SAMPLES = {
    "token": "a",
    "date": "ge2024",
    "reference": "p1",
    "quantity": "gt5",
    "composite": "a$5",
}


def test_registry_lists_the_promised_parameters() -> None:
    names = {type_: {p.name for p in RESOURCES[type_].parameters} for type_ in searchable_types()}
    assert names == {
        "Observation": {
            "code",
            "category",
            "date",
            "patient",
            "subject",
            "device",
            "_id",
            "_lastUpdated",
            "value-quantity",
            "component-code-value-quantity",
            "identifier",
        },
        "Patient": {"_id", "_lastUpdated", "identifier"},
        "Device": {"_id", "_lastUpdated", "patient", "identifier"},
    }
    assert {p.name for p in RESULT_PARAMETERS} == {
        "_count",
        "_sort",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_format",
    }


def test_registry_canonical_urls_and_operations() -> None:
    observation = resource_search("Observation")
    assert observation is not None and resource_search("Medication") is None
    definitions = {p.name: p.definition for p in observation.parameters}
    assert definitions["code"] == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert definitions["_id"] == "http://hl7.org/fhir/SearchParameter/Resource-id"
    assert all(
        url.startswith("http://hl7.org/fhir/SearchParameter/") for url in definitions.values()
    )
    assert observation.includes == ("Observation:patient", "Observation:device")
    assert set(observation.sort_fields) == {"date", "_lastUpdated", "_id"}
    (operation,) = observation.operations
    assert operation.code == "lastn"
    assert operation.definition == "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
    assert "max" in {p.name for p in operation.parameters}


@pytest.mark.parametrize(
    ("type_", "name"),
    [(type_, p.name) for type_, spec in RESOURCES.items() for p in spec.parameters],
)
def test_every_registered_parameter_is_honoured(type_: str, name: str) -> None:
    spec = RESOURCES[type_]
    param = spec.parameter(name)
    assert param is not None
    parsed = parse((name, SAMPLES[param.type]), type_=type_, strict=True)
    assert len(parsed.query.clauses) == 1 and parsed.self_params == ((name, SAMPLES[param.type]),)
    for modifier in param.modifiers:
        value = "a" if param.type == "token" else "p1"
        assert (
            len(parse((f"{name}:{modifier}", value), type_=type_, strict=True).query.clauses) == 1
        )


@pytest.mark.parametrize("type_", ["Observation", "Patient", "Device"])
def test_every_registered_sort_field_is_honoured(type_: str) -> None:
    for field in RESOURCES[type_].sort_fields:
        assert parse(("_sort", field), type_=type_, strict=True).query.sort == Sort(field)
