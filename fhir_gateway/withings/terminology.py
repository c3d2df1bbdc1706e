"""The CodeSystems behind our local Withings codings, built from the tables. Pure.

Served (or bundled) so that a client meeting `withings-meastype|226` can look up what it is.
"""

from __future__ import annotations

from typing import Any

from fhir_gateway.withings import identity
from fhir_gateway.withings.meastypes import (
    ACTIVITY_FIELDS,
    AFIB_RESULTS,
    MEASTYPES,
    POSITIONS,
    SLEEP_FIELDS,
    SummaryField,
)

Resource = dict[str, Any]


def _code_system(
    id_: str, url: str, title: str, description: str, concepts: list[Resource]
) -> Resource:
    return {
        "resourceType": "CodeSystem",
        "id": id_,
        "url": url,
        "name": "".join(part.capitalize() for part in id_.split("-")),
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "fhir-gateway",
        "description": description,
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": concepts,
    }


def meastype_code_system() -> Resource:
    """CodeSystem `withings-meastype`: one concept per known Withings meastype."""
    concepts = []
    for row in MEASTYPES:
        unit = "a classification code (see withings-afib)" if row.ucum is None else row.unit
        definition = f"Withings meastype {row.type}; value in {unit}."
        if row.source == "verify":
            definition += " Known from a secondary source only."
        concepts.append({"code": str(row.type), "display": row.name, "definition": definition})
    return _code_system(
        "withings-meastype",
        identity.WITHINGS_MEASTYPE_SYSTEM,
        "Withings measure types",
        "The `type` of a Withings getmeas measure (value × 10^unit in SI units).",
        concepts,
    )


def afib_code_system() -> Resource:
    """CodeSystem `withings-afib`: the AFib classification of meastypes 130 and 139."""
    concepts = [{"code": str(code), "display": name} for code, name in AFIB_RESULTS.items()]
    return _code_system(
        "withings-afib",
        identity.WITHINGS_AFIB_SYSTEM,
        "Withings atrial fibrillation results",
        "Value of Withings meastype 130 (ECG) and 139 (PPG): an AFib classification.",
        concepts,
    )


def position_code_system() -> Resource:
    """CodeSystem `withings-position`: where on the body a measure was taken."""
    concepts = [{"code": str(code), "display": name} for code, name in POSITIONS.items()]
    return _code_system(
        "withings-position",
        identity.WITHINGS_POSITION_SYSTEM,
        "Withings measure positions",
        "The `position` of a Withings measure (7, whole body, is undocumented but observed).",
        concepts,
    )


def _field_concepts(fields: tuple[SummaryField, ...]) -> list[Resource]:
    return [{"code": field.field, "display": field.display} for field in fields]


def activity_code_system() -> Resource:
    """CodeSystem `withings-activity`: the daily activity fields of getactivity."""
    return _code_system(
        "withings-activity",
        identity.WITHINGS_ACTIVITY_SYSTEM,
        "Withings daily activity fields",
        "Numeric fields of a Withings getactivity row (one user-local day).",
        _field_concepts(ACTIVITY_FIELDS),
    )


def sleep_code_system() -> Resource:
    """CodeSystem `withings-sleep`: the numeric fields of a sleep getsummary night."""
    return _code_system(
        "withings-sleep",
        identity.WITHINGS_SLEEP_SYSTEM,
        "Withings sleep summary fields",
        "Numeric fields of the `data` of a Withings sleep getsummary row (one night).",
        _field_concepts(SLEEP_FIELDS),
    )


def code_systems() -> list[Resource]:
    """Every local CodeSystem our Observations use."""
    return [
        meastype_code_system(),
        afib_code_system(),
        position_code_system(),
        activity_code_system(),
        sleep_code_system(),
    ]
