"""The Store contract: every test runs against SQLite and MongoDB (see conftest.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import orjson
import pytest

from fhir_gateway.errors import StoreError, VersionConflict
from fhir_gateway.fhir.dates import implied_range
from fhir_gateway.store import (
    ComponentClause,
    ComponentMatch,
    Cursor,
    DateClause,
    IdClause,
    NumberBounds,
    QuantityClause,
    QuantityMatch,
    Query,
    RangeBounds,
    Record,
    ReferenceClause,
    Sort,
    Store,
    StoredResource,
    TokenClause,
    TokenMatch,
    UpsertResult,
    to_micros,
)
from tests.store import resources as fx

INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def body(stored: StoredResource) -> dict[str, object]:
    return orjson.loads(stored.json)  # type: ignore[no-any-return]


def ids(resources: list[StoredResource]) -> list[str]:
    return [resource.id for resource in resources]


def observations(*clauses: object, **options: object) -> Query:
    return Query("Observation", clauses=clauses, **options)  # type: ignore[arg-type]


def at(value: str) -> int:
    """Start of a FHIR date's implied range, in UTC microseconds."""
    return implied_range(value).start


def date_clause(*alternatives: RangeBounds) -> DateClause:
    return DateClause("date", alternatives)


async def found(store: Store, query: Query) -> list[str]:
    return ids((await store.search(query)).resources)


# ---------------------------------------------------------------- versions


async def test_create_sets_version_and_last_updated_and_keeps_other_meta(store: Store) -> None:
    before = datetime.now(UTC)
    result = await store.upsert([fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.5)])
    assert result == UpsertResult(created=1)

    stored = await store.read("Observation", "w1")
    assert stored is not None
    assert (stored.resource_type, stored.id, stored.version_id, stored.deleted) == (
        "Observation",
        "w1",
        1,
        False,
    )
    assert stored.last_updated.tzinfo is not None and stored.last_updated >= before
    meta = body(stored)["meta"]
    assert isinstance(meta, dict)
    assert meta["versionId"] == "1"
    assert INSTANT.match(meta["lastUpdated"])
    assert datetime.fromisoformat(meta["lastUpdated"]) == stored.last_updated
    assert meta["profile"] == ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]
    assert body(stored)["valueQuantity"] == fx.weight("x", "p", "2024", 72.5)["valueQuantity"]
    assert stored.date_start == to_micros(datetime(2024, 5, 1, 8, tzinfo=UTC))


async def test_same_content_is_unchanged_even_with_different_meta(store: Store) -> None:
    resource = fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.5)
    await store.upsert([resource])
    first = await store.read("Observation", "w1")
    again = fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.5)
    again["meta"] |= {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}

    assert await store.upsert([again]) == UpsertResult(unchanged=1)
    assert await store.read("Observation", "w1") == first


async def test_changed_content_creates_a_new_version_with_a_later_timestamp(store: Store) -> None:
    await store.upsert([fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.5)])
    first = await store.read("Observation", "w1")
    result = await store.upsert([fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.4)])
    second = await store.read("Observation", "w1")

    assert result == UpsertResult(updated=1)
    assert first is not None and second is not None
    assert second.version_id == 2 and body(second)["meta"]["versionId"] == "2"  # type: ignore[index]
    assert second.last_updated > first.last_updated
    assert body(second)["valueQuantity"]["value"] == 72.4  # type: ignore[index]


async def test_batch_counts_and_repeated_resource_in_one_batch(store: Store) -> None:
    await store.upsert(
        [fx.weight("w1", "p1", "2024-05-01", 70), fx.weight("w2", "p1", "2024-05-02", 71)]
    )
    result = await store.upsert(
        [
            fx.weight("w1", "p1", "2024-05-01", 70),  # unchanged
            fx.weight("w2", "p1", "2024-05-02", 71.5),  # updated
            fx.weight("w3", "p1", "2024-05-03", 72),  # created
            fx.weight("w3", "p1", "2024-05-03", 72.5),  # updated again in the same batch
        ]
    )
    assert result == UpsertResult(created=1, updated=2, unchanged=1)
    history = await store.history("Observation", "w3")
    assert [entry.version_id for entry in history] == [2, 1]
    assert history[0].last_updated > history[1].last_updated


async def test_read_vread_history_and_delete(store: Store) -> None:
    assert await store.read("Observation", "nope") is None
    assert await store.delete("Observation", "nope") is False
    assert await store.history("Observation", "nope") == []

    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 71)])
    assert await store.delete("Observation", "w1") is True
    assert await store.delete("Observation", "w1") is False

    marker = await store.read("Observation", "w1")
    assert marker is not None and marker.deleted and marker.version_id == 3 and marker.json == b""
    history = await store.history("Observation", "w1")
    assert [(entry.version_id, entry.deleted) for entry in history] == [
        (3, True),
        (2, False),
        (1, False),
    ]
    assert history[0].last_updated > history[1].last_updated > history[2].last_updated
    first = await store.vread("Observation", "w1", 1)
    assert first is not None and body(first)["valueQuantity"]["value"] == 70  # type: ignore[index]
    assert await store.vread("Observation", "w1", 4) is None
    assert await found(store, observations()) == []
    assert await store.count(observations()) == 0

    # The same content as before the delete still revives the resource as a new version.
    assert await store.upsert([fx.weight("w1", "p1", "2024-05-01", 71)]) == UpsertResult(updated=1)
    revived = await store.read("Observation", "w1")
    assert revived is not None and not revived.deleted and revived.version_id == 4
    assert await found(store, observations()) == ["w1"]


async def test_concurrent_upserts_of_one_resource_lose_no_version(store: Store) -> None:
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    results = await asyncio.gather(
        *(store.upsert([fx.weight("w1", "p1", "2024-05-01", 80 + n)]) for n in range(10))
    )
    assert sum(result.updated for result in results) == 10
    history = await store.history("Observation", "w1")
    assert [entry.version_id for entry in history] == list(range(11, 0, -1))
    current = await store.read("Observation", "w1")
    assert current is not None and current.version_id == 11
    assert await store.count(observations()) == 1


async def test_concurrent_creates_of_one_resource_make_one_resource(store: Store) -> None:
    results = await asyncio.gather(
        *(store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)]) for _ in range(5))
    )
    assert sum(result.created for result in results) == 1
    assert sum(result.unchanged for result in results) == 4
    assert [entry.version_id for entry in await store.history("Observation", "w1")] == [1]


# ---------------------------------------------------------------- search clauses


@pytest.fixture
async def vitals(store: Store) -> Store:
    await store.upsert(
        [
            fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 72.5, device="d1"),
            fx.weight("w2", "p1", "2024-05-10T08:00:00Z", 71.0),
            fx.weight("w3", "p2", "2024-05-02T08:00:00Z", 90.0),
            fx.heart_rate("hr1", "p1", "2024-05-01T08:00:00Z", 64),
            fx.blood_pressure("bp1", "p1", "2024-05-03T07:00:00Z", 120, 80),
            fx.blood_pressure("bp2", "p1", "2024-05-04T07:00:00Z", 145, 95),
            fx.steps("s1", "p1", "2024-05-01", "2024-05-02", 8000),  # a closed whole day
            fx.steps("s2", "p1", "2024-05-20T06:00:00Z", None, 1200),  # still open
            fx.note("n1", "p1", "felt dizzy"),
            fx.local_code("l1", "p1", "2024-05-05", "local-1"),
            fx.patient("p1", "Doe"),
            fx.device("d1", "p1", "00:24:e4:aa:bb:cc"),
        ]
    )
    return store


TOKEN_CASES = [
    # (token matches, negate, expected ids)
    ((TokenMatch(*fx.WEIGHT),), False, ["w1", "w2", "w3"]),
    ((TokenMatch(None, "29463-7"),), False, ["w1", "w2", "w3"]),
    ((TokenMatch(fx.WITHINGS_MEASTYPE, "1"),), False, ["w1", "w2", "w3"]),  # second coding
    ((TokenMatch(fx.LOINC, None),), False, ["bp1", "bp2", "hr1", "s1", "s2", "w1", "w2", "w3"]),
    ((TokenMatch("", "local-1"),), False, ["l1"]),
    ((TokenMatch("", "29463-7"),), False, []),  # has a system, so not "no system"
    ((TokenMatch(None, "local-1"),), False, ["l1"]),
    ((TokenMatch(*fx.WEIGHT), TokenMatch(*fx.HEART_RATE)), False, ["hr1", "w1", "w2", "w3"]),
    ((TokenMatch(fx.LOINC, "nope"),), False, []),
    ((TokenMatch(*fx.WEIGHT),), True, ["bp1", "bp2", "hr1", "l1", "n1", "s1", "s2"]),
    ((TokenMatch(*fx.WEIGHT), TokenMatch(*fx.STEPS)), True, ["bp1", "bp2", "hr1", "l1", "n1"]),
]


@pytest.mark.parametrize(("tokens", "negate", "expected"), TOKEN_CASES)
async def test_code_tokens(
    vitals: Store, tokens: tuple[TokenMatch, ...], negate: bool, expected: list[str]
) -> None:
    query = observations(TokenClause("code", tokens, negate=negate), limit=100)
    assert await found(vitals, query) == expected
    assert await vitals.count(query) == len(expected)


async def test_category_not_includes_resources_without_a_category(vitals: Store) -> None:
    activity = TokenMatch(fx.CATEGORY_SYSTEM, "activity")
    assert await found(vitals, observations(TokenClause("category", (activity,)))) == ["s1", "s2"]
    assert await found(vitals, observations(TokenClause("category", (activity,), True))) == [
        "bp1",
        "bp2",
        "hr1",
        "l1",
        "n1",
        "w1",
        "w2",
        "w3",
    ]


async def test_identifier_on_any_resource_type(vitals: Store) -> None:
    mac = TokenMatch("urn:withings:mac", "00:24:e4:aa:bb:cc")
    assert await found(vitals, Query("Device", (TokenClause("identifier", (mac,)),))) == ["d1"]
    grp = TokenMatch(fx.WITHINGS_GRPID, "grp-bp2")
    assert await found(vitals, observations(TokenClause("identifier", (grp,)))) == ["bp2"]


async def test_clauses_are_anded_and_references_and_ids_filter(vitals: Store) -> None:
    weight = TokenClause("code", (TokenMatch(*fx.WEIGHT),))
    assert await found(vitals, observations(weight, ReferenceClause("patient", ("p1",)))) == [
        "w1",
        "w2",
    ]
    assert await found(vitals, observations(weight, ReferenceClause("patient", ("p2", "p9")))) == [
        "w3"
    ]
    assert await found(vitals, observations(ReferenceClause("device", ("d1",)))) == ["w1"]
    assert await found(vitals, Query("Device", (ReferenceClause("patient", ("p1",)),))) == ["d1"]
    assert await found(vitals, observations(IdClause(("w3", "bp1", "zz")))) == ["bp1", "w3"]
    assert await found(vitals, Query("Patient", (IdClause(("p1",)),))) == ["p1"]
    assert await found(vitals, observations(IdClause(("p1",)))) == []  # ids are per type


DATE_CASES = [
    # The store evaluates RangeBounds on [date_start, date_end); fhir/dates.py picks them.
    ((RangeBounds(start_ge=at("2024-05-01"), end_le=at("2024-05-02")),), ["hr1", "w1"]),
    (
        (RangeBounds(start_ge=at("2024-05-01"), end_le=at("2024-06-01")),),
        ["bp1", "bp2", "hr1", "l1", "s1", "w1", "w2", "w3"],  # s2 never ends, n1 never starts
    ),
    # A resource without effective[x] (n1) is [OPEN_START, OPEN_END): it reaches every date.
    ((RangeBounds(end_gt=at("2024-05-10")),), ["n1", "s2", "w2"]),
    ((RangeBounds(end_gt=at("2024-05-05")),), ["l1", "n1", "s2", "w2"]),
    ((RangeBounds(start_lt=at("2024-05-02")),), ["hr1", "n1", "s1", "w1"]),
    ((RangeBounds(start_lt=at("2024-05-03")),), ["hr1", "n1", "s1", "w1", "w3"]),
    ((RangeBounds(start_ge=at("2024-05-05")),), ["l1", "s2", "w2"]),
    ((RangeBounds(end_le=at("2024-05-02")),), ["hr1", "w1"]),  # s1 ends on 05-03
    (
        (RangeBounds(start_lt=at("2024-05-01")), RangeBounds(end_gt=at("2024-05-02"))),
        ["bp1", "bp2", "l1", "n1", "s1", "s2", "w2", "w3"],
    ),
    (
        (
            RangeBounds(start_ge=at("2024-05-03"), end_le=at("2024-05-04")),
            RangeBounds(start_ge=at("2024-05-10"), end_le=at("2024-05-11")),
        ),
        ["bp1", "w2"],
    ),
    (
        (RangeBounds(start_ge=at("2024-05-01T08:00:00Z"), end_le=at("2024-05-01T08:00:01Z")),),
        ["hr1", "w1"],
    ),
    ((RangeBounds(end_gt=at("2025-01-01")),), ["n1", "s2"]),  # an open period reaches on
]


@pytest.mark.parametrize(("alternatives", "expected"), DATE_CASES)
async def test_date_bounds_on_effective(
    vitals: Store, alternatives: tuple[RangeBounds, ...], expected: list[str]
) -> None:
    query = observations(date_clause(*alternatives), limit=100)
    assert await found(vitals, query) == expected
    assert await vitals.count(query) == len(expected)


async def test_date_clauses_and_together_for_a_range(vitals: Store) -> None:
    query = observations(
        date_clause(RangeBounds(end_gt=at("2024-05-02"))),
        date_clause(RangeBounds(start_lt=at("2024-05-05"))),
    )
    assert await found(vitals, query) == ["bp1", "bp2", "n1", "s1", "w3"]


async def test_date_range_with_a_code_for_one_patient(vitals: Store) -> None:
    """The hot path (tokens-driven in SQLite): patient + code + a date window."""
    query = observations(
        ReferenceClause("patient", ("p1",)),
        TokenClause("code", (TokenMatch(*fx.WEIGHT),)),
        date_clause(RangeBounds(end_gt=at("2024-05-01"), start_lt=at("2024-05-10"))),
        sort=Sort("date", descending=True),
    )
    assert await found(vitals, query) == ["w1"]
    wider = observations(*query.clauses[:2], sort=Sort("date", descending=True))
    assert await found(vitals, wider) == ["w2", "w1"]


async def test_last_updated_clause(store: Store) -> None:
    await store.upsert([fx.weight("w1", "p1", "2024-05-01", 70)])
    first = await store.read("Observation", "w1")
    await store.upsert([fx.weight("w2", "p1", "2024-05-01", 70)])
    assert first is not None
    micros = to_micros(first.last_updated)

    def last_updated(bounds: RangeBounds) -> Query:
        return observations(DateClause("lastUpdated", (bounds,)))

    assert await found(store, last_updated(RangeBounds(start_ge=micros, end_le=micros + 1))) == [
        "w1"
    ]
    assert await found(store, last_updated(RangeBounds(end_gt=micros))) == ["w1", "w2"]
    assert await found(store, last_updated(RangeBounds(end_gt=micros + 1))) == ["w2"]
    assert await found(store, last_updated(RangeBounds(start_lt=micros + 1))) == ["w1"]
    assert await found(store, last_updated(RangeBounds(start_lt=micros))) == []


async def test_long_closed_periods_are_found_by_date_windows(store: Store) -> None:
    """Backends may prune `date_end > v` by the widest stored span: it must grow with the data."""
    await store.upsert(
        [
            fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 70),
            fx.steps("day", "p1", "2024-05-01", "2024-05-02", 9000),  # [05-01, 05-03)
        ]
    )
    window = date_clause(RangeBounds(end_gt=at("2024-05-02T12:00:00Z")))
    assert await found(store, observations(window)) == ["day"]
    await store.upsert([fx.steps("month", "p1", "2024-04-01", "2024-04-30", 250000)])
    assert await found(store, observations(date_clause(RangeBounds(end_gt=at("2024-04-29"))))) == [
        "day",
        "month",
        "w1",
    ]


QUANTITY_CASES = [
    (QuantityMatch(NumberBounds(ge=72.5)), ["s1", "s2", "w1", "w3"]),
    (QuantityMatch(NumberBounds(gt=70, lt=80)), ["w1", "w2"]),
    (QuantityMatch(NumberBounds(ge=71, le=71)), ["w2"]),
    (QuantityMatch(NumberBounds(gt=60), fx.UCUM, "kg"), ["w1", "w2", "w3"]),
    (QuantityMatch(NumberBounds(gt=60), None, "/min"), ["hr1"]),  # UCUM code
    (QuantityMatch(NumberBounds(gt=60), None, "beats/minute"), ["hr1"]),  # unit text
    (QuantityMatch(NumberBounds(gt=60), "http://other.org", "kg"), []),
    (QuantityMatch(NumberBounds(lt=100), None, "mm[Hg]"), []),  # BP values are components
]


@pytest.mark.parametrize(("match", "expected"), QUANTITY_CASES)
async def test_value_quantity(vitals: Store, match: QuantityMatch, expected: list[str]) -> None:
    assert await found(vitals, observations(QuantityClause((match,)), limit=100)) == expected


async def test_quantity_alternatives_are_ored(vitals: Store) -> None:
    clause = QuantityClause(
        (QuantityMatch(NumberBounds(lt=65), None, "/min"), QuantityMatch(NumberBounds(gt=85)))
    )
    assert await found(vitals, observations(clause)) == ["hr1", "s1", "s2", "w3"]


def component(code: tuple[str, str], bounds: NumberBounds) -> ComponentMatch:
    return ComponentMatch(TokenMatch(*code), QuantityMatch(bounds, fx.UCUM, "mm[Hg]"))


async def test_component_must_match_code_and_value_in_one_component(vitals: Store) -> None:
    high_systolic = component(fx.SYSTOLIC, NumberBounds(ge=140))
    assert await found(vitals, observations(ComponentClause((high_systolic,)))) == ["bp2"]
    # bp1 has a component with value 80 (diastolic) and a systolic component, but not both in one.
    systolic_80 = component(fx.SYSTOLIC, NumberBounds(ge=80, le=80))
    assert await found(vitals, observations(ComponentClause((systolic_80,)))) == []
    diastolic_80 = component(fx.DIASTOLIC, NumberBounds(ge=80, le=80))
    either = ComponentClause((diastolic_80, high_systolic))
    assert await found(vitals, observations(either)) == ["bp1", "bp2"]
    by_unit_text = ComponentMatch(
        TokenMatch(None, fx.SYSTOLIC[1]), QuantityMatch(NumberBounds(lt=130), None, "mmHg")
    )
    assert await found(vitals, observations(ComponentClause((by_unit_text,)))) == ["bp1"]


# ---------------------------------------------------------------- sort and paging


@pytest.fixture
async def series(store: Store) -> Store:
    # 12 weights: two share each timestamp so that ties are broken by id.
    await store.upsert(
        [
            fx.weight(f"w{n:02d}", "p1", f"2024-05-{n // 2 + 1:02d}T08:00:00Z", 70 + n / 10)
            for n in range(12)
        ]
    )
    return store


SORTS = [Sort("_id"), Sort("_id", True), Sort("date"), Sort("date", True)]
SORTS += [Sort("_lastUpdated"), Sort("_lastUpdated", True)]


async def all_in_order(store: Store, sort: Sort) -> list[StoredResource]:
    return (await store.search(observations(sort=sort, limit=1000))).resources


@pytest.mark.parametrize("sort", SORTS)
async def test_sort_orders_with_ties_broken_by_id(series: Store, sort: Sort) -> None:
    rows = await all_in_order(series, sort)
    keys = [(row.sort_value(sort.field), row.id) for row in rows]
    assert keys == sorted(keys, reverse=sort.descending)
    assert len(rows) == 12


@pytest.mark.parametrize("sort", SORTS)
async def test_keyset_paging_forward_and_backward(series: Store, sort: Sort) -> None:
    expected = ids(await all_in_order(series, sort))
    pages: list[list[str]] = []
    after: Cursor | None = None
    while True:
        page = await series.search(observations(sort=sort, after=after, limit=5))
        pages.append(ids(page.resources))
        if not page.more:
            break
        last = page.resources[-1]
        after = Cursor(last.sort_value(sort.field), last.id)
    assert pages == [expected[0:5], expected[5:10], expected[10:12]]

    # Walk back from the last page with `before`: each page is the one just before.
    first_of_last = expected[10]
    row = next(r for r in await all_in_order(series, sort) if r.id == first_of_last)
    page = await series.search(
        observations(sort=sort, before=Cursor(row.sort_value(sort.field), row.id), limit=5)
    )
    assert ids(page.resources) == expected[5:10] and page.more
    head = page.resources[0]
    page = await series.search(
        observations(sort=sort, before=Cursor(head.sort_value(sort.field), head.id), limit=5)
    )
    assert ids(page.resources) == expected[0:5] and not page.more


async def test_limit_and_count_ignore_each_other(series: Store) -> None:
    page = await series.search(observations(limit=3))
    assert ids(page.resources) == ["w00", "w01", "w02"] and page.more
    exact = await series.search(observations(limit=12))
    assert len(exact.resources) == 12 and not exact.more
    cursor = Cursor("w05", "w05")
    assert await series.count(observations(after=cursor, limit=1)) == 12
    patient_2 = ReferenceClause("patient", ("p2",))
    assert await series.count(observations(patient_2)) == 0


async def test_paging_is_stable_while_rows_are_inserted(series: Store) -> None:
    sort = Sort("date", descending=True)
    seen: list[str] = []
    after: Cursor | None = None
    inserted = 0
    while True:
        page = await series.search(observations(sort=sort, after=after, limit=4))
        seen.extend(ids(page.resources))
        # New measures arrive between pages, some before and some after the cursor.
        await series.upsert(
            [
                fx.weight(f"new{inserted}", "p1", "2024-05-03T08:00:00Z", 50),
                fx.weight(f"new{inserted + 1}", "p1", "2025-01-01T08:00:00Z", 50),
            ]
        )
        inserted += 2
        if not page.more:
            break
        last = page.resources[-1]
        after = Cursor(last.sort_value(sort.field), last.id)
    originals = [row for row in seen if row.startswith("w")]
    assert sorted(originals) == [f"w{n:02d}" for n in range(12)]
    assert len(set(seen)) == len(seen)


async def test_date_sort_puts_undated_resources_first_ascending(vitals: Store) -> None:
    rows = await found(vitals, observations(sort=Sort("date"), limit=3))
    assert rows[0] == "n1"  # no effective[x]: date_start is the open-start sentinel


# ---------------------------------------------------------------- $lastn


async def test_lastn_groups_by_code_and_keeps_the_newest(store: Store) -> None:
    await store.upsert(
        [
            fx.weight("w1", "p1", "2024-05-01T08:00:00Z", 70),
            fx.weight("w2", "p1", "2024-05-02T08:00:00Z", 71),
            fx.weight("w3", "p1", "2024-05-03T08:00:00Z", 72),
            fx.weight("w4", "p2", "2024-05-04T08:00:00Z", 90),
            fx.blood_pressure("bp1", "p1", "2024-05-01T07:00:00Z", 120, 80),
            fx.blood_pressure("bp2", "p1", "2024-05-02T07:00:00Z", 125, 85),
            fx.blood_pressure("bp3", "p1", "2024-05-02T07:00:00Z", 130, 85),  # tie: id breaks it
            fx.heart_rate("hr1", "p1", "2024-05-01T08:00:00Z", 64),
            fx.note("n1", "p1", "no code group"),
        ]
    )
    await store.delete("Observation", "w3")
    p1 = ReferenceClause("patient", ("p1",))
    lastn = await store.lastn(observations(p1), 2)
    # Groups ordered by code_group: "http://loinc.org|29463-7" < "…|85354-9" < "…|8867-4".
    assert ids(lastn) == ["w2", "w1", "bp3", "bp2", "hr1"]

    vital_signs = TokenClause("category", (TokenMatch(fx.CATEGORY_SYSTEM, "vital-signs"),))
    weight = TokenClause("code", (TokenMatch(*fx.WEIGHT),))
    assert ids(await store.lastn(observations(p1, vital_signs, weight), 1)) == ["w2"]
    assert ids(await store.lastn(observations(ReferenceClause("patient", ("p2",))), 5)) == ["w4"]
    assert await store.lastn(observations(ReferenceClause("patient", ("p9",))), 5) == []


# ---------------------------------------------------------------- records


async def test_records_compare_and_set(store: Store) -> None:
    assert await store.get_record("cursor", "u1") is None
    created = await store.put_record("cursor", "u1", {"lastupdate": 10}, expected_version=0)
    assert (created.version, created.data) == (1, {"lastupdate": 10})
    with pytest.raises(VersionConflict):
        await store.put_record("cursor", "u1", {"lastupdate": 11}, expected_version=0)
    with pytest.raises(VersionConflict):
        await store.put_record("cursor", "u1", {"lastupdate": 11}, expected_version=2)
    updated = await store.put_record("cursor", "u1", {"lastupdate": 11}, expected_version=1)
    assert updated.version == 2
    unconditional = await store.put_record("cursor", "u1", {"lastupdate": 12})
    assert unconditional.version == 3
    assert await store.get_record("cursor", "u1") == unconditional
    with pytest.raises(VersionConflict):
        await store.put_record("cursor", "absent", {}, expected_version=1)
    fresh = await store.put_record("cursor", "u2", {"nested": {"a": [1, "b"]}})
    assert fresh.version == 1 and fresh.data == {"nested": {"a": [1, "b"]}}

    assert await store.delete_record("cursor", "u1") is True
    assert await store.delete_record("cursor", "u1") is False
    assert await store.get_record("cursor", "u1") is None
    again = await store.put_record("cursor", "u1", {"lastupdate": 1}, expected_version=0)
    assert again.version == 1


async def test_concurrent_compare_and_set_has_one_winner(store: Store) -> None:
    await store.put_record("token", "u1", {"refresh": "r0"})
    outcomes = await asyncio.gather(
        *(
            store.put_record("token", "u1", {"refresh": f"r{n}"}, expected_version=1)
            for n in range(20)
        ),
        return_exceptions=True,
    )
    winners = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, VersionConflict) for o in outcomes if o not in winners)
    current = await store.get_record("token", "u1")
    assert current is not None and current.version == 2 and current.data == winners[0].data


async def test_list_records_filters_by_kind_and_fields_in_key_order(store: Store) -> None:
    await store.put_record("inbox", "b", {"state": "pending", "tries": 1, "urgent": True})
    await store.put_record("inbox", "a", {"state": "pending", "tries": 0, "urgent": False})
    await store.put_record("inbox", "c", {"state": "done", "tries": 1, "urgent": True})
    await store.put_record("other", "a", {"state": "pending"})

    def keys(records: list[Record]) -> list[str]:
        return [record.key for record in records]

    assert keys(await store.list_records("inbox")) == ["a", "b", "c"]
    assert keys(await store.list_records("inbox", where={"state": "pending"})) == ["a", "b"]
    assert keys(await store.list_records("inbox", where={"tries": 1})) == ["b", "c"]
    assert keys(await store.list_records("inbox", where={"urgent": True})) == ["b", "c"]
    assert keys(await store.list_records("inbox", where={"urgent": 1})) == []  # bool is not int
    assert keys(await store.list_records("inbox", where={"tries": True})) == []
    where: dict[str, str | int | bool] = {"state": "pending", "urgent": True}
    assert keys(await store.list_records("inbox", where=where)) == ["b"]
    assert keys(await store.list_records("inbox", limit=2)) == ["a", "b"]
    assert keys(await store.list_records("inbox", where={"missing": "x"})) == []


# ---------------------------------------------------------------- lifecycle


async def test_open_is_idempotent_and_ping_fails_once_closed(store: Store) -> None:
    await store.open()
    await store.ping()
    await store.upsert([fx.patient("p1", "Doe")])
    await store.open()
    assert await store.read("Patient", "p1") is not None
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()
