"""The searchable facts of a resource (`SearchIndex`), extracted once when it is written. Pure."""

from __future__ import annotations

from typing import Any

from fhir_gateway.fhir.dates import implied_range
from fhir_gateway.store.base import (
    OPEN_END,
    OPEN_START,
    ComponentKey,
    QuantityKey,
    Resource,
    SearchIndex,
    TokenKey,
)


def _reference_id(reference: Any, resource_type: str) -> str | None:
    """'Patient/123' (or an absolute URL ending so) → '123'; other types → None."""
    if not isinstance(reference, dict):
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _codings(concept: Any) -> tuple[TokenKey, ...]:
    if not isinstance(concept, dict):
        return ()
    return tuple(
        TokenKey(system=coding.get("system", ""), code=coding["code"])
        for coding in concept.get("coding", [])
        if isinstance(coding, dict) and isinstance(coding.get("code"), str)
    )


def _quantity(value: Any) -> QuantityKey | None:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float | str):
        return None
    return QuantityKey(
        value=float(value["value"]),
        system=value.get("system", ""),
        code=value.get("code", ""),
        unit=value.get("unit", ""),
    )


def _effective_range(resource: Resource) -> tuple[int, int]:
    if isinstance(resource.get("effectiveDateTime"), str):
        moment = implied_range(resource["effectiveDateTime"])
        return moment.start, moment.end
    if isinstance(resource.get("effectiveInstant"), str):
        moment = implied_range(resource["effectiveInstant"])
        return moment.start, moment.end
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        start = implied_range(period["start"]).start if "start" in period else OPEN_START
        end = implied_range(period["end"]).end if "end" in period else OPEN_END
        return start, end
    return OPEN_START, OPEN_END


def search_index(resource: Resource) -> SearchIndex:
    """Everything search, sort and $lastn need from one resource."""
    resource_type = resource.get("resourceType")
    identifiers = tuple(
        TokenKey(system=identifier.get("system", ""), code=identifier["value"])
        for identifier in resource.get("identifier", [])
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str)
    )
    if resource_type == "Device":
        return SearchIndex(
            patient=_reference_id(resource.get("patient"), "Patient"), identifiers=identifiers
        )
    if resource_type != "Observation":
        return SearchIndex(identifiers=identifiers)

    codes = _codings(resource.get("code"))
    categories = tuple(
        token for concept in resource.get("category", []) for token in _codings(concept)
    )
    value = _quantity(resource.get("valueQuantity"))
    components = tuple(
        ComponentKey(token=token, quantity=quantity)
        for component in resource.get("component", [])
        if (quantity := _quantity(component.get("valueQuantity"))) is not None
        for token in _codings(component.get("code"))
    )
    date_start, date_end = _effective_range(resource)
    return SearchIndex(
        patient=_reference_id(resource.get("subject"), "Patient"),
        device=_reference_id(resource.get("device"), "Device"),
        codes=codes,
        categories=categories,
        identifiers=identifiers,
        date_start=date_start,
        date_end=date_end,
        quantities=(value,) if value is not None else (),
        components=components,
        code_group=f"{codes[0].system}|{codes[0].code}" if codes else None,
    )
