"""Search parameter values by type (token, reference, date, quantity, composite) → clauses. Pure.

FHIR R4 search §3.1.1.6: `\\,` `\\|` `\\$` `\\\\` escape; a comma inside one value ORs.
Quantities: `ap` is ±10 % of the number, but never narrower than the number's own precision.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from fhir_gateway.errors import InvalidSearch
from fhir_gateway.fhir.dates import PREFIXES, implied_range, prefix_bounds, split_prefix
from fhir_gateway.fhir.registry import SearchParameter
from fhir_gateway.store.base import (
    Clause,
    ComponentClause,
    ComponentMatch,
    DateClause,
    IdClause,
    NumberBounds,
    QuantityClause,
    QuantityMatch,
    RangeBounds,
    ReferenceClause,
    TokenClause,
    TokenMatch,
)

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 datatypes §2.24.0.1 `id`
_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]{0,63}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_HISTORY_SUFFIX = re.compile(r"/_history/[^/]*$")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,512}")
_UNESCAPE = re.compile(r"\\([,|$\\])")


def show(text: str) -> str:
    """A client-supplied text quoted for a message, cut short so messages stay readable."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def invalid(name: str, value: str, why: str) -> InvalidSearch:
    return InvalidSearch(f"invalid value {show(value)} for search parameter {show(name)}: {why}")


# ---------------------------------------------------------------- escaping (§3.1.1.6)


def split_escaped(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not escaped by a backslash; escapes are kept."""
    if "\\" not in text:
        return text.split(separator)  # the common case, and the hot path of every search
    pieces: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    pieces.append("".join(current))
    return pieces


def unescape(text: str) -> str:
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


# ---------------------------------------------------------------- values by parameter type


def _token(name: str, value: str, text: str) -> TokenMatch:
    """'code', 'system|code', '|code' (no system) or 'system|' (any code in the system)."""
    parts = [unescape(part) for part in split_escaped(text, "|")]
    if len(parts) == 1 and parts[0]:
        return TokenMatch(system=None, code=parts[0])
    if len(parts) == 2 and (parts[0] or parts[1]):
        return TokenMatch(system=parts[0], code=parts[1] or None)
    raise invalid(name, value, "expected code, system|code, |code or system|")


def _tokens(name: str, value: str) -> tuple[TokenMatch, ...]:
    return tuple(_token(name, value, item) for item in split_escaped(value, ","))


def checked_id(name: str, value: str, text: str) -> str:
    if _ID.fullmatch(text) is None:
        raise invalid(name, value, f"{show(text)} is not a FHIR id")
    return text


def _reference_ids(param: SearchParameter, modifier: str, value: str) -> tuple[str, ...]:
    """'123', 'Patient/123', 'https://host/fhir/Patient/123', or '123' with `:Patient`."""
    ids: list[str] = []
    for item in split_escaped(value, ","):
        head, slash, text = _HISTORY_SUFFIX.sub("", unescape(item)).rpartition("/")
        if slash:
            # 'Type/id' or a URL ending so: the segment before the id names the type.
            type_ = head.rpartition("/")[2]
            if _RESOURCE_TYPE.fullmatch(type_) is None:
                raise invalid(param.name, value, "expected id, Type/id or a URL ending so")
            if type_ not in param.targets or modifier not in ("", type_):
                raise invalid(
                    param.name, value, f"only references to {'/'.join(param.targets)} are held"
                )
        ids.append(checked_id(param.name, value, text))
    return tuple(ids)


# A date's implied range depends on its text alone; clients repeat the same few dates.
_implied_range = lru_cache(maxsize=1024)(implied_range)


def _dates(param: SearchParameter, value: str, now: datetime) -> tuple[RangeBounds, ...]:
    alternatives: list[RangeBounds] = []
    for item in value.split(","):
        prefix, text = split_prefix(item)
        try:
            search_range = _implied_range(text)
        except ValueError:
            raise invalid(param.name, value, f"{show(item)} is not a FHIR date") from None
        alternatives.extend(prefix_bounds(prefix, search_range, now))
    return tuple(alternatives)


def reads_clock(param: SearchParameter, value: str) -> bool:
    """Whether the clause for `value` depends on `now`: only the `ap` date prefix does."""
    return param.field in ("date", "lastUpdated") and any(
        split_prefix(item)[0] == "ap" for item in value.split(",")
    )


def _number_bounds(name: str, value: str, text: str) -> tuple[NumberBounds, ...]:
    """'[prefix]number' → ORed bounds; '5.4' implies [5.35, 5.45) (FHIR R4 search §3.1.1.4.1)."""
    prefix, number = (text[:2], text[2:]) if text[:2] in PREFIXES else ("eq", text)
    if _NUMBER.fullmatch(number) is None:
        raise invalid(name, value, f"{show(number)} is not a number")
    exact = Decimal(number)
    exponent = exact.as_tuple().exponent
    assert isinstance(exponent, int)  # finite by the pattern above
    if abs(exact.adjusted()) > 300 or exponent < -300:
        raise invalid(name, value, "number out of the supported range")
    # Half a unit in the last written place: 5.4 → 0.05, 100 → 0.5, 1e2 → 50 (one significant
    # figure; the spec's example says [95, 105), which contradicts its own rule).
    half = Decimal(5).scaleb(exponent - 1)
    point, low, high = float(exact), float(exact - half), float(exact + half)
    if prefix == "eq":
        return (NumberBounds(ge=low, lt=high),)
    if prefix == "ne":
        return (NumberBounds(lt=low), NumberBounds(ge=high))
    if prefix in ("gt", "sa"):
        return (NumberBounds(gt=point),)
    if prefix in ("lt", "eb"):
        return (NumberBounds(lt=point),)
    if prefix == "ge":
        return (NumberBounds(ge=point),)
    if prefix == "le":
        return (NumberBounds(le=point),)
    margin = max(abs(point) * 0.1, float(half))  # ap
    return (NumberBounds(ge=point - margin, le=point + margin),)


def _quantities(name: str, value: str, text: str) -> tuple[QuantityMatch, ...]:
    """'[prefix]number', 'number|system|code' or 'number||code'."""
    parts = split_escaped(text, "|")
    if len(parts) not in (1, 3):
        raise invalid(name, value, "expected [prefix]number[|system|code]")
    system = code = None
    if len(parts) == 3:
        system, code = (unescape(parts[1]) or None), (unescape(parts[2]) or None)
    return tuple(
        QuantityMatch(bounds, system, code) for bounds in _number_bounds(name, value, parts[0])
    )


def _components(name: str, value: str) -> tuple[ComponentMatch, ...]:
    """'token$quantity' pairs, e.g. 'http://loinc.org|8480-6$ge140'."""
    matches: list[ComponentMatch] = []
    for item in split_escaped(value, ","):
        parts = split_escaped(item, "$")
        if len(parts) != 2:
            raise invalid(name, value, "expected token$quantity")
        token = _token(name, value, parts[0])
        matches.extend(ComponentMatch(token, q) for q in _quantities(name, value, parts[1]))
    return tuple(matches)


def clause(param: SearchParameter, modifier: str, value: str, now: datetime) -> Clause:
    field = param.field
    if field == "id":
        return IdClause(tuple(checked_id(param.name, value, i) for i in value.split(",")))
    if field in ("code", "category", "identifier"):
        return TokenClause(field, _tokens(param.name, value), negate=modifier == "not")
    if field in ("patient", "device"):
        return ReferenceClause(field, _reference_ids(param, modifier, value))
    if field in ("date", "lastUpdated"):
        return DateClause(field, _dates(param, value, now))
    if field == "quantity":
        items = split_escaped(value, ",")
        return QuantityClause(tuple(m for i in items for m in _quantities(param.name, value, i)))
    return ComponentClause(_components(param.name, value))
