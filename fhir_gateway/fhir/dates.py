"""FHIR date values as the ranges their precision implies, and date prefixes as range conditions.

Pure: no I/O. Values without a time zone are read as UTC (documented in the README); FHIR R4
leaves the zone of zone-less values to the server (search §3.1.1.4.5).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from fhir_gateway.errors import InvalidSearch
from fhir_gateway.store.base import RangeBounds, to_micros

# ASCII digits only: `\d` would also accept other scripts' digits, which int() then reads.
_DATE_PATTERN = re.compile(
    r"(?P<year>[0-9]{4})"
    r"(?:-(?P<month>[0-9]{2})"
    r"(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?)?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?"
    r")?)?)?"
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")

_SECOND = 1_000_000
_MINUTE = 60 * _SECOND
_DAY = 86_400 * _SECOND


@dataclass(frozen=True, slots=True)
class DateRange:
    start: int  # inclusive, UTC microseconds
    end: int  # exclusive, UTC microseconds


def _offset_micros(text: str | None) -> int:
    """'+14:00' → 14 h in microseconds; None and 'Z' are UTC."""
    if text is None or text == "Z":
        return 0
    hours, minutes = int(text[1:3]), int(text[4:6])
    if minutes > 59 or hours * 60 + minutes > 14 * 60:
        raise ValueError("offset out of range")
    magnitude = (hours * 60 + minutes) * _MINUTE
    return magnitude if text[0] == "+" else -magnitude


def implied_range(value: str) -> DateRange:
    """'2024-05' → [2024-05-01T00:00Z, 2024-06-01T00:00Z): the range its precision covers.

    Accepts FHIR date, dateTime and instant forms (and minute precision, which search allows).
    Raises ValueError when the text is not one of them or names an impossible date.
    """
    match = _DATE_PATTERN.fullmatch(value)
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    parts = match.groupdict()
    offset = _offset_micros(parts["zone"])
    year = int(parts["year"])
    if year < 1:
        raise ValueError("year 0000 does not exist")
    month = int(parts["month"] or 1)
    fraction = parts["fraction"] or ""
    # The wall-clock start, validated by datetime (day 31 of April, hour 24 … raise ValueError).
    local_start = datetime(
        year,
        month,
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int((fraction + "000000")[:6]),
        tzinfo=UTC,
    )
    # Lengths are added as integers, not datetimes, so that 9999-12-31T23:59-05:00 (whose UTC
    # end lies in year 10000) and 0001-01-01T00:00+14:00 (UTC start in year 0) stay representable.
    if parts["month"] is None:
        length = (366 if calendar.isleap(year) else 365) * _DAY
    elif parts["day"] is None:
        length = calendar.monthrange(year, month)[1] * _DAY
    elif parts["hour"] is None:
        length = _DAY
    elif parts["second"] is None:
        length = _MINUTE
    elif not fraction:
        length = _SECOND
    else:
        # A fraction finer than microseconds still implies at least one microsecond.
        length = 10 ** max(0, 6 - len(fraction))
    start = to_micros(local_start) - offset
    return DateRange(start, start + length)


def prefix_bounds(prefix: str, search: DateRange, now: datetime) -> tuple[RangeBounds, ...]:
    """One FHIR date prefix against a target range T=[start, end), as ORed RangeBounds.

    FHIR R4 search §3.1.1.4.5 (S = search range):
    eq S contains T · ne not eq · gt T reaches above S · lt T reaches below S · ge gt or eq ·
    le lt or eq · sa T starts after S ends · eb T ends before S starts · ap T overlaps S widened
    by 10 % of the distance from now (at least one day), a server choice the spec allows.
    """
    s, e = search.start, search.end
    if prefix == "eq":
        return (RangeBounds(start_ge=s, end_le=e),)
    if prefix == "ne":
        return (RangeBounds(start_lt=s), RangeBounds(end_gt=e))
    if prefix == "gt":
        return (RangeBounds(end_gt=e),)
    if prefix == "lt":
        return (RangeBounds(start_lt=s),)
    # ge/le are literally "gt or eq" / "lt or eq": a Period that straddles S's start (or end)
    # without reaching past S on the other side is neither, so it does not match.
    if prefix == "ge":
        return (RangeBounds(end_gt=e), RangeBounds(start_ge=s, end_le=e))
    if prefix == "le":
        return (RangeBounds(start_lt=s), RangeBounds(start_ge=s, end_le=e))
    if prefix == "sa":
        return (RangeBounds(start_ge=e),)
    if prefix == "eb":
        return (RangeBounds(end_le=s),)
    if prefix == "ap":
        gap = abs(to_micros(now) - (s + e) // 2)
        margin = max(gap // 10, _DAY)
        return (RangeBounds(start_lt=e + margin, end_gt=s - margin),)
    raise InvalidSearch(f"unknown date prefix {prefix!r}")


def split_prefix(value: str) -> tuple[str, str]:
    """'ge2024-01' → ('ge', '2024-01'); no prefix means eq."""
    if len(value) >= 2 and value[:2] in PREFIXES:
        return value[:2], value[2:]
    return "eq", value


def range_matches(bounds: RangeBounds, start: int, end: int) -> bool:
    """Whether the target range [start, end) meets every condition of `bounds`.

    The reference meaning every Store backend must agree with (base.RangeBounds).
    """
    return (
        (bounds.start_ge is None or start >= bounds.start_ge)
        and (bounds.start_lt is None or start < bounds.start_lt)
        and (bounds.end_gt is None or end > bounds.end_gt)
        and (bounds.end_le is None or end <= bounds.end_le)
    )
