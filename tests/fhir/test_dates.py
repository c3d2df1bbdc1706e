"""Date ranges and the nine prefixes (FHIR R4 search §3.1.1.4.5), as a hand-reasoned matrix.

Every expected outcome below comes from reading the spec's prefix table against a target's
*position* relative to the search range S = [s, e): the tables are written by hand, once, and the
matrix checks that they hold for every precision and time zone. Search ranges are given with
hand-computed UTC bounds, so `implied_range` is checked against arithmetic done on paper.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_gateway.errors import InvalidSearch
from fhir_gateway.fhir.dates import (
    PREFIXES,
    DateRange,
    implied_range,
    prefix_bounds,
    range_matches,
    split_prefix,
)
from fhir_gateway.fhir.search import parse_search
from fhir_gateway.store.base import (
    OPEN_END,
    OPEN_START,
    DateClause,
    RangeBounds,
    to_micros,
)

DAY = 86_400_000_000
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def utc(text: str) -> int:
    """A hand-written UTC instant ('2024-03-09T10:00:00Z') as microseconds."""
    return to_micros(datetime.fromisoformat(text.replace("Z", "+00:00")))


# ---------------------------------------------------------------- implied ranges

ZONES = ("+14:00", "-05:00", "Z", "")
PRECISIONS = ("year", "month", "day", "minute", "second", "fraction")

# (precision, zone) → (search value, start in UTC, end in UTC), worked out by hand. Dates
# without a time carry no zone in FHIR, so the date precisions read the same in every zone
# (the zone then matters on the target side, see `render`).
SEARCH_VALUES: dict[tuple[str, str], tuple[str, str, str]] = {
    **{("year", zone): ("2024", "2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z") for zone in ZONES},
    **{
        # February of a leap year: 29 days.
        ("month", zone): ("2024-02", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z")
        for zone in ZONES
    },
    **{
        ("day", zone): ("2024-03-10", "2024-03-10T00:00:00Z", "2024-03-11T00:00:00Z")
        for zone in ZONES
    },
    # Local midnight at +14:00 is 10:00 the day before in UTC.
    ("minute", "+14:00"): (
        "2024-03-10T00:00+14:00",
        "2024-03-09T10:00:00Z",
        "2024-03-09T10:01:00Z",
    ),
    # The last minute of a local day at -05:00 ends at 05:00 UTC the next day.
    ("minute", "-05:00"): (
        "2024-03-10T23:59-05:00",
        "2024-03-11T04:59:00Z",
        "2024-03-11T05:00:00Z",
    ),
    ("minute", "Z"): ("2024-03-10T00:00Z", "2024-03-10T00:00:00Z", "2024-03-10T00:01:00Z"),
    ("minute", ""): ("2024-03-10T00:00", "2024-03-10T00:00:00Z", "2024-03-10T00:01:00Z"),
    ("second", "+14:00"): (
        "2024-12-31T23:59:59+14:00",
        "2024-12-31T09:59:59Z",
        "2024-12-31T10:00:00Z",
    ),
    # Local new year's eve at -05:00 is already the next year in UTC.
    ("second", "-05:00"): (
        "2024-12-31T23:59:59-05:00",
        "2025-01-01T04:59:59Z",
        "2025-01-01T05:00:00Z",
    ),
    ("second", "Z"): ("2024-12-31T23:59:59Z", "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z"),
    ("second", ""): ("2024-12-31T23:59:59", "2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z"),
    # One fractional digit is a tenth of a second.
    ("fraction", "+14:00"): (
        "2024-03-10T00:00:00.5+14:00",
        "2024-03-09T10:00:00.500000Z",
        "2024-03-09T10:00:00.600000Z",
    ),
    ("fraction", "-05:00"): (
        "2024-03-10T23:59:59.999-05:00",
        "2024-03-11T04:59:59.999000Z",
        "2024-03-11T05:00:00.000000Z",
    ),
    ("fraction", "Z"): (
        "2024-02-29T23:59:59.123456Z",
        "2024-02-29T23:59:59.123456Z",
        "2024-02-29T23:59:59.123457Z",
    ),
    ("fraction", ""): (
        "2024-02-29T23:59:59.12",
        "2024-02-29T23:59:59.120000Z",
        "2024-02-29T23:59:59.130000Z",
    ),
}


@pytest.mark.parametrize(("value", "start", "end"), sorted(set(SEARCH_VALUES.values())))
def test_implied_range_of_each_precision_and_zone(value: str, start: str, end: str) -> None:
    assert implied_range(value) == DateRange(utc(start), utc(end))


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2023", "2023-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),  # 365 days
        ("2023-02", "2023-02-01T00:00:00Z", "2023-03-01T00:00:00Z"),  # 28 days
        ("2024-12", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
        ("2024-04-30", "2024-04-30T00:00:00Z", "2024-05-01T00:00:00Z"),
        ("2024-05-01T08:00:00+02:00", "2024-05-01T06:00:00Z", "2024-05-01T06:00:01Z"),
        ("2024-05-01T08:00:00-00:30", "2024-05-01T08:30:00Z", "2024-05-01T08:30:01Z"),
        # Nanoseconds still imply one microsecond at least.
        (
            "2024-05-01T08:00:00.123456789Z",
            "2024-05-01T08:00:00.123456Z",
            "2024-05-01T08:00:00.123457Z",
        ),
        ("2024-05-01T08:00:00.000Z", "2024-05-01T08:00:00Z", "2024-05-01T08:00:00.001Z"),
    ],
)
def test_implied_range_examples(value: str, start: str, end: str) -> None:
    assert implied_range(value) == DateRange(utc(start), utc(end))


def test_extreme_years_in_offset_zones_do_not_overflow() -> None:
    # 0001-01-01T00:00+14:00 starts in year 0 UTC, 14 hours before 0001-01-01T00:00Z.
    first = implied_range("0001-01-01T00:00+14:00")
    assert first.start == utc("0001-01-01T00:00:00Z") - 14 * 3_600_000_000
    assert first.end - first.start == 60_000_000
    # 9999-12-31T23:59-05:00 ends at 10000-01-01T05:00Z, past datetime's range.
    last = implied_range("9999-12-31T23:59-05:00")
    assert last.end == utc("9999-12-31T00:00:00Z") + DAY + 5 * 3_600_000_000
    assert implied_range("9999").end == utc("9999-01-01T00:00:00Z") + 365 * DAY
    assert implied_range("9999-12").end == utc("9999-12-01T00:00:00Z") + 31 * DAY


@pytest.mark.parametrize(
    "value",
    [
        "",
        "24",
        "2024-5",
        "2024-13",
        "2024-02-30",
        "2023-02-29",
        "0000",
        "2024-05-01T24:00Z",
        "2024-05-01T08:60Z",
        "2024-05-01T08:00:60Z",
        "2024-05-01T08",
        "2024-05-01Z",
        "2024-05-01T08:00:00+15:00",
        "2024-05-01T08:00:00+14:30",
        "2024-05-01T08:00:00+01:60",
        "2024-05-01T08:00:00.Z",
        "2024-05-01T08:00:00.1234567890Z",
        "2024-05-01 08:00:00Z",
        "٢٠٢٤",  # Arabic-Indic digits are digits to Python, not to FHIR
        "2024-05-01T08:00:00z",
    ],
)
def test_implied_range_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        implied_range(value)


def test_split_prefix() -> None:
    assert split_prefix("ge2024-01") == ("ge", "2024-01")
    assert split_prefix("2024-01") == ("eq", "2024-01")
    assert split_prefix("ap2024") == ("ap", "2024")
    assert split_prefix("xx2024") == ("eq", "xx2024")


def test_unknown_prefix_is_invalid_search() -> None:
    with pytest.raises(InvalidSearch):
        prefix_bounds("zz", DateRange(0, 1), NOW)


# ---------------------------------------------------------------- the prefix matrix

# Targets by position relative to S = [s, e), as (start, end) offsets. Instants are one
# microsecond wide; OPEN marks an open Period end.
OPEN = None
TARGETS: dict[str, tuple[tuple[str, int] | None, tuple[str, int] | None]] = {
    # dateTime instants
    "instant at start": (("s", 0), ("s", 1)),
    "instant at last micro": (("e", -1), ("e", 0)),
    "instant at end": (("e", 0), ("e", 1)),
    "instant just before": (("s", -1), ("s", 0)),
    "instant far before": (("s", -400 * DAY), ("s", -400 * DAY + 1)),
    "instant far after": (("e", 400 * DAY), ("e", 400 * DAY + 1)),
    # closed Periods
    "period equal": (("s", 0), ("e", 0)),
    "period covering": (("s", -1), ("e", 1)),
    "period straddling start": (("s", -1), ("s", 1)),
    "period straddling end": (("e", -1), ("e", 1)),
    # open-start Periods (no start)
    "open start, ends inside": (OPEN, ("s", 1)),
    "open start, ends at start": (OPEN, ("s", 0)),
    "open start, ends after": (OPEN, ("e", 1)),
    # open-end Periods (ongoing)
    "open end, starts inside": (("e", -1), OPEN),
    "open end, starts at end": (("e", 0), OPEN),
    "open end, starts before": (("s", -1), OPEN),
}

# The spec's prefix table against each position, by hand:
#   eq: S contains T          ne: not eq
#   gt: T reaches above S     lt: T reaches below S
#   ge: gt or eq              le: lt or eq
#   sa: T starts at or after S's end    eb: T ends at or before S's start
#   ap: T overlaps S widened by a day (`now` is S's middle, so 10 % of the gap is less)
T, F = True, False
EXPECTED: dict[str, dict[str, bool]] = {
    #                                   eq ne gt lt ge le sa eb ap
    "instant at start": dict(zip(PREFIXES, (T, F, F, F, T, T, F, F, T), strict=True)),
    "instant at last micro": dict(zip(PREFIXES, (T, F, F, F, T, T, F, F, T), strict=True)),
    "instant at end": dict(zip(PREFIXES, (F, T, T, F, T, F, T, F, T), strict=True)),
    "instant just before": dict(zip(PREFIXES, (F, T, F, T, F, T, F, T, T), strict=True)),
    "instant far before": dict(zip(PREFIXES, (F, T, F, T, F, T, F, T, F), strict=True)),
    "instant far after": dict(zip(PREFIXES, (F, T, T, F, T, F, T, F, F), strict=True)),
    "period equal": dict(zip(PREFIXES, (T, F, F, F, T, T, F, F, T), strict=True)),
    "period covering": dict(zip(PREFIXES, (F, T, T, T, T, T, F, F, T), strict=True)),
    "period straddling start": dict(zip(PREFIXES, (F, T, F, T, F, T, F, F, T), strict=True)),
    "period straddling end": dict(zip(PREFIXES, (F, T, T, F, T, F, F, F, T), strict=True)),
    "open start, ends inside": dict(zip(PREFIXES, (F, T, F, T, F, T, F, F, T), strict=True)),
    "open start, ends at start": dict(zip(PREFIXES, (F, T, F, T, F, T, F, T, T), strict=True)),
    "open start, ends after": dict(zip(PREFIXES, (F, T, T, T, T, T, F, F, T), strict=True)),
    "open end, starts inside": dict(zip(PREFIXES, (F, T, T, F, T, F, F, F, T), strict=True)),
    "open end, starts at end": dict(zip(PREFIXES, (F, T, T, F, T, F, T, F, T), strict=True)),
    "open end, starts before": dict(zip(PREFIXES, (F, T, T, T, T, T, F, F, T), strict=True)),
}


def render(micros: int, zone: str) -> str:
    """An instant written in `zone` with microseconds ('' = zone-less local = UTC here)."""
    offset = {"+14:00": 14, "-05:00": -5}.get(zone, 0)
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    local = moment.astimezone(timezone(timedelta(hours=offset)))
    text = local.replace(tzinfo=None).isoformat(timespec="microseconds")
    return text + zone


def target_range(name: str, s: int, e: int, zone: str) -> tuple[int, int]:
    """Build the target's [start, end) by writing each end as a FHIR instant in `zone`."""
    anchors = {"s": s, "e": e}
    start_spec, end_spec = TARGETS[name]

    def point(spec: tuple[str, int]) -> int:
        return implied_range(render(anchors[spec[0]] + spec[1], zone)).start

    start = OPEN_START if start_spec is None else point(start_spec)
    end = OPEN_END if end_spec is None else point(end_spec)
    return start, end


def satisfied(alternatives: tuple[RangeBounds, ...], start: int, end: int) -> bool:
    return any(range_matches(bounds, start, end) for bounds in alternatives)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_matrix(prefix: str, precision: str, zone: str) -> None:
    value, start_text, end_text = SEARCH_VALUES[(precision, zone)]
    s, e = utc(start_text), utc(end_text)
    now = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=(s + e) // 2)
    alternatives = prefix_bounds(prefix, implied_range(value), now)
    wrong = [
        name
        for name in TARGETS
        if satisfied(alternatives, *target_range(name, s, e, zone)) != EXPECTED[name][prefix]
    ]
    assert wrong == [], f"{prefix}{value}: unexpected outcome for {wrong}"


def test_matrix_targets_land_where_their_names_say() -> None:
    # The zone rendering must not move a target: check one precision in every zone.
    s, e = utc("2024-03-09T10:00:00Z"), utc("2024-03-09T10:01:00Z")
    for zone in ZONES:
        assert target_range("instant at start", s, e, zone) == (s, s + 1)
        assert target_range("open end, starts at end", s, e, zone) == (e, OPEN_END)
        assert target_range("open start, ends inside", s, e, zone) == (OPEN_START, s + 1)


# ---------------------------------------------------------------- named spec examples


def range_of(text: str) -> tuple[int, int]:
    found = implied_range(text)
    return found.start, found.end


@pytest.mark.parametrize(
    ("search", "target", "expected"),
    [
        # search.html examples: a day holds times both before and after 10:00 that day.
        ("gt2013-01-14T10:00Z", range_of("2013-01-14"), True),
        ("lt2013-01-14T10:00Z", range_of("2013-01-14"), True),
        ("eq2013-01-14", range_of("2013-01-14T10:00:00Z"), True),
        ("eq2013-01-14", range_of("2013-01-15T00:00:00Z"), False),
        # A day in a +14:00 zone starts on the previous UTC day: not in the UTC day.
        ("eq2013-01-14", range_of("2013-01-14T00:00:00+14:00"), False),
        ("eq2013-01-14", range_of("2013-01-14T23:59:59-05:00"), False),
        ("eq2013-01-14", range_of("2013-01-13T23:59:59-05:00"), True),
        # IBM's note: a second does not contain a day-long Period; `ap` finds it.
        (
            "eq2018-10-29T12:00:00Z",
            (utc("2018-10-29T00:00:00Z"), utc("2018-10-30T00:00:00Z")),
            False,
        ),
        (
            "ap2018-10-29T12:00:00Z",
            (utc("2018-10-29T00:00:00Z"), utc("2018-10-30T00:00:00Z")),
            True,
        ),
        # ge/le on equal ranges are the eq half of their definition.
        ("ge2024-05-01", range_of("2024-05-01"), True),
        ("le2024-05-01", range_of("2024-05-01"), True),
        ("gt2024-05-01", range_of("2024-05-01"), False),
        ("lt2024-05-01", range_of("2024-05-01"), False),
        # sa/eb need no overlap at all; touching ends do not overlap (ranges are half-open).
        ("sa2024-05-01", range_of("2024-05-02"), True),
        ("sa2024-05-01", (utc("2024-05-01T23:59:59Z"), utc("2024-05-02T00:00:01Z")), False),
        ("eb2024-05-01", range_of("2024-04-30"), True),
        ("eb2024-05-01", (utc("2024-04-30T23:59:59Z"), utc("2024-05-01T00:00:01Z")), False),
        # An open-ended Period that started last year is "ge" any later date.
        ("ge2030-01-01", (utc("2023-01-01T00:00:00Z"), OPEN_END), True),
        ("le2000-01-01", (OPEN_START, utc("2023-01-01T00:00:00Z")), True),
    ],
)
def test_named_examples(search: str, target: tuple[int, int], expected: bool) -> None:
    prefix, text = split_prefix(search)
    assert satisfied(prefix_bounds(prefix, implied_range(text), NOW), *target) is expected


def test_ap_widens_with_the_distance_from_now() -> None:
    # Ten years before NOW, 10 % of the gap is about a year: a target 200 days off matches,
    # one 500 days off does not; next to NOW the margin is one day.
    search = implied_range("2014-06-01")
    near = (search.start - 200 * DAY, search.start - 200 * DAY + 1)
    far = (search.start - 500 * DAY, search.start - 500 * DAY + 1)
    alternatives = prefix_bounds("ap", search, NOW)
    assert satisfied(alternatives, *near) and not satisfied(alternatives, *far)
    today = implied_range("2024-06-01")
    alternatives = prefix_bounds("ap", today, NOW)
    assert satisfied(alternatives, today.end + DAY - 1, today.end + DAY)
    assert not satisfied(alternatives, today.end + DAY, today.end + DAY + 1)


def test_range_matches_each_condition_alone() -> None:
    assert range_matches(RangeBounds(), OPEN_START, OPEN_END)
    assert range_matches(RangeBounds(start_ge=10), 10, 11)
    assert not range_matches(RangeBounds(start_ge=10), 9, 11)
    assert range_matches(RangeBounds(start_lt=10), 9, 20)
    assert not range_matches(RangeBounds(start_lt=10), 10, 20)
    assert range_matches(RangeBounds(end_gt=10), 0, 11)
    assert not range_matches(RangeBounds(end_gt=10), 0, 10)
    assert range_matches(RangeBounds(end_le=10), 0, 10)
    assert not range_matches(RangeBounds(end_le=10), 0, 11)


def date_query_matches(params: list[tuple[str, str]], start: int, end: int) -> bool:
    """Clauses AND, alternatives OR (store/base.py)."""
    parsed = parse_search("Observation", params, strict=True, now=NOW)
    clauses = [c for c in parsed.query.clauses if isinstance(c, DateClause)]
    return all(satisfied(clause.alternatives, start, end) for clause in clauses)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        ("2024-02-29T23:59:59Z", False),
        ("2024-03-01T00:00:00Z", True),
        ("2024-03-01T00:00:00+01:00", False),  # 2024-02-29T23:00Z
        ("2024-03-31T23:59:59Z", True),
        ("2024-04-01T00:00:00-05:00", False),  # 05:00Z on April 1st
        ("2024-03-31T23:59:59-05:00", False),  # 04:59:59Z on April 1st
        ("2024-04-01T00:00:00Z", False),
    ],
)
def test_ge_and_lt_together_select_a_month(instant: str, expected: bool) -> None:
    params = [("date", "ge2024-03-01"), ("date", "lt2024-04-01")]
    assert date_query_matches(params, *range_of(instant)) is expected


def test_comma_ors_and_repeats_and() -> None:
    may_first, may_third = range_of("2024-05-01T12:00:00Z"), range_of("2024-05-03T12:00:00Z")
    either = [("date", "2024-05-01,2024-05-03")]
    assert date_query_matches(either, *may_first) and date_query_matches(either, *may_third)
    both = [("date", "2024-05-01"), ("date", "2024-05-03")]
    assert not date_query_matches(both, *may_first)
