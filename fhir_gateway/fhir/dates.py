"""FHIR date values as the ranges their precision implies, and date prefixes as range conditions.

Pure: no I/O. Values without a time zone are read as UTC (documented in the README); FHIR R4
leaves the zone of zone-less values to the server (search §3.1.1.4.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from fhir_gateway.errors import InvalidSearch
from fhir_gateway.store.base import RangeBounds, to_micros

_DATE_PATTERN = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})"
    r"(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
    r")?)?)?"
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True, slots=True)
class DateRange:
    start: int  # inclusive, UTC microseconds
    end: int  # exclusive, UTC microseconds


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)


def implied_range(value: str) -> DateRange:
    """'2024-05' → [2024-05-01T00:00Z, 2024-06-01T00:00Z): the range its precision covers.

    Accepts FHIR date, dateTime and instant forms (and minute precision, which search allows).
    Raises ValueError when the text is not one of them or names an impossible date.
    """
    match = _DATE_PATTERN.fullmatch(value)
    if match is None:
        raise ValueError(f"not a FHIR date: {value!r}")
    parts = match.groupdict()
    zone = _zone(parts["zone"])
    year = int(parts["year"])
    if year < 1:
        raise ValueError("year 0000 does not exist")
    month = int(parts["month"] or 1)
    day = int(parts["day"] or 1)
    hour = int(parts["hour"] or 0)
    minute = int(parts["minute"] or 0)
    second = int(parts["second"] or 0)
    fraction = parts["fraction"] or ""
    micros = int((fraction + "000000")[:6]) if fraction else 0
    start = datetime(year, month, day, hour, minute, second, micros, tzinfo=zone)
    if parts["month"] is None:
        end = start.replace(year=year + 1) if year < 9999 else datetime.max.replace(tzinfo=zone)
    elif parts["day"] is None:
        end = _add_months(start, 1) if (year, month) != (9999, 12) else start.replace(day=31)
    elif parts["hour"] is None:
        end = start + timedelta(days=1)
    elif parts["second"] is None:
        end = start + timedelta(minutes=1)
    elif not fraction:
        end = start + timedelta(seconds=1)
    else:
        # A fraction finer than microseconds still implies at least one microsecond.
        step = 10 ** max(0, 6 - len(fraction))
        end = start + timedelta(microseconds=step)
    return DateRange(to_micros(start.astimezone(UTC)), to_micros(end.astimezone(UTC)))


def prefix_bounds(prefix: str, search: DateRange, now: datetime) -> tuple[RangeBounds, ...]:
    """One FHIR date prefix against a target range T=[start, end), as ORed RangeBounds.

    FHIR R4 search §3.1.1.4.5 (S = search range):
    eq S contains T · ne not eq · gt T reaches above S · lt T reaches below S · ge/le gt|eq,
    lt|eq · sa T starts after S ends · eb T ends before S starts · ap T overlaps S widened by
    10 % of the distance from now (at least one day), a server choice the spec allows.
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
    if prefix == "ge":
        return (RangeBounds(end_gt=s),)
    if prefix == "le":
        return (RangeBounds(start_lt=e),)
    if prefix == "sa":
        return (RangeBounds(start_ge=e),)
    if prefix == "eb":
        return (RangeBounds(end_le=s),)
    if prefix == "ap":
        gap = abs(to_micros(now) - (s + e) // 2)
        margin = max(gap // 10, 86_400_000_000)
        return (RangeBounds(start_lt=e + margin, end_gt=s - margin),)
    raise InvalidSearch(f"unknown date prefix {prefix!r}")


def split_prefix(value: str) -> tuple[str, str]:
    """'ge2024-01' → ('ge', '2024-01'); no prefix means eq."""
    if len(value) >= 2 and value[:2] in PREFIXES:
        return value[:2], value[2:]
    return "eq", value
