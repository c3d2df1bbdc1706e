"""The one registry of what can be searched here: data read by the search parser and by the
CapabilityStatement, so that what we advertise and what we honour cannot drift apart.

Per resource type: its search parameters (with canonical SearchParameter URLs from FHIR R4),
the `_sort` keys, the `_include` values, the Patient-compartment link and the operations.
Result parameters (`_count`, `_sort` …) are shared by every type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

from fhir_gateway.store.base import SortField

SearchParamType: TypeAlias = Literal[
    "token", "date", "reference", "quantity", "composite", "string", "special", "number"
]
# The SearchIndex fact a parameter is evaluated against (see store/base.py).
IndexField: TypeAlias = Literal[
    "id",
    "lastUpdated",
    "date",
    "code",
    "category",
    "identifier",
    "patient",
    "device",
    "quantity",
    "component",
]

_BASE = "http://hl7.org/fhir/SearchParameter/"


@dataclass(frozen=True, slots=True)
class SearchParameter:
    """A filter parameter. `modifiers` are the `name:modifier` forms we honour."""

    name: str
    type: SearchParamType
    definition: str
    documentation: str
    field: IndexField
    modifiers: tuple[str, ...] = ()
    # Reference parameters: the resource types a value may name (`subject=Patient/1`).
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResultParameter:
    """A parameter that shapes the result rather than filtering it (FHIR R4 search §3.1.1.5)."""

    name: str
    type: SearchParamType
    documentation: str
    # A closed set of accepted values, when there is one.
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OperationParameter:
    name: str
    use: Literal["in", "out"]
    min: int
    max: str
    documentation: str
    type: str | None = None
    search_type: SearchParamType | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """A FHIR operation invoked as `[base]/[resource_type]/$[code]`."""

    code: str
    resource_type: str
    definition: str
    documentation: str
    parameters: tuple[OperationParameter, ...]
    type_level: bool = True
    instance_level: bool = False
    affects_state: bool = False


@dataclass(frozen=True, slots=True)
class ResourceSearch:
    """Everything searchable on one resource type."""

    resource_type: str
    parameters: tuple[SearchParameter, ...]
    sort_fields: tuple[SortField, ...]
    # The parameter that links a resource to its Patient compartment (FHIR R4
    # compartmentdefinition-patient; a Patient is in its own compartment by `_id`).
    patient_compartment: str
    includes: tuple[str, ...] = ()
    operations: tuple[Operation, ...] = ()

    def parameter(self, name: str) -> SearchParameter | None:
        return next((param for param in self.parameters if param.name == name), None)


_ID = SearchParameter(
    "_id",
    "token",
    _BASE + "Resource-id",
    "Logical id of the resource; comma-separated = any of.",
    "id",
)
_LAST_UPDATED = SearchParameter(
    "_lastUpdated",
    "date",
    _BASE + "Resource-lastUpdated",
    "When the resource version last changed (meta.lastUpdated); all nine prefixes.",
    "lastUpdated",
)

_NOT = ("not",)

OBSERVATION_PARAMETERS = (
    SearchParameter(
        "code",
        "token",
        _BASE + "clinical-code",
        "The code of the observation (LOINC, or the Withings meastype); every coding matches.",
        "code",
        _NOT,
    ),
    SearchParameter(
        "category",
        "token",
        _BASE + "Observation-category",
        "The classification of the observation, e.g. vital-signs, activity.",
        "category",
        _NOT,
    ),
    SearchParameter(
        "date",
        "date",
        _BASE + "clinical-date",
        "effective[x] as a range (dateTime, instant or Period, open ends included); all nine "
        "prefixes; values without a time zone are UTC.",
        "date",
    ),
    SearchParameter(
        "patient",
        "reference",
        _BASE + "clinical-patient",
        "The patient the observation is about: id, Patient/id or an absolute URL.",
        "patient",
        ("Patient",),
        ("Patient",),
    ),
    SearchParameter(
        "subject",
        "reference",
        _BASE + "Observation-subject",
        "The subject of the observation; only Patient subjects are held here.",
        "patient",
        ("Patient",),
        ("Patient",),
    ),
    SearchParameter(
        "device",
        "reference",
        _BASE + "Observation-device",
        "The Withings device that made the measurement.",
        "device",
        ("Device",),
        ("Device",),
    ),
    _ID,
    _LAST_UPDATED,
    SearchParameter(
        "value-quantity",
        "quantity",
        _BASE + "Observation-value-quantity",
        "valueQuantity: [prefix]number[|system|code]; the number's significant figures imply "
        "its range; code matches the UCUM code or the unit text.",
        "quantity",
    ),
    SearchParameter(
        "component-code-value-quantity",
        "composite",
        _BASE + "Observation-component-code-value-quantity",
        "A component whose code and valueQuantity both match: token$quantity, e.g. "
        "http://loinc.org|8480-6$ge140.",
        "component",
    ),
    SearchParameter(
        "identifier",
        "token",
        _BASE + "clinical-identifier",
        "Business identifier of the observation (the Withings measure group).",
        "identifier",
        _NOT,
    ),
)

PATIENT_PARAMETERS = (
    _ID,
    _LAST_UPDATED,
    SearchParameter(
        "identifier",
        "token",
        _BASE + "Patient-identifier",
        "A patient identifier (the Withings user id).",
        "identifier",
        _NOT,
    ),
)

DEVICE_PARAMETERS = (
    _ID,
    _LAST_UPDATED,
    SearchParameter(
        "patient",
        "reference",
        _BASE + "Device-patient",
        "The patient the device belongs to.",
        "patient",
        ("Patient",),
        ("Patient",),
    ),
    SearchParameter(
        "identifier",
        "token",
        _BASE + "Device-identifier",
        "A device identifier (MAC address, Withings device id).",
        "identifier",
        _NOT,
    ),
)

LASTN_MAX_LIMIT = 100

LASTN = Operation(
    code="lastn",
    resource_type="Observation",
    definition="http://hl7.org/fhir/OperationDefinition/Observation-lastn",
    documentation=(
        "The most recent `max` observations per code, for one patient; requires patient or "
        "subject, and category and/or code. Any Observation search parameter may be added."
    ),
    parameters=(
        OperationParameter(
            "max",
            "in",
            0,
            "1",
            f"Observations per code group, 1 to {LASTN_MAX_LIMIT} (default 1).",
            type="positiveInt",
        ),
        OperationParameter(
            "patient", "in", 0, "1", "The patient (or use subject).", search_type="reference"
        ),
        OperationParameter(
            "subject", "in", 0, "1", "The subject (or use patient).", search_type="reference"
        ),
        OperationParameter(
            "category", "in", 0, "*", "Category (or use code).", search_type="token"
        ),
        OperationParameter("code", "in", 0, "*", "Code (or use category).", search_type="token"),
        OperationParameter(
            "date", "in", 0, "*", "Restrict to observations in a date range.", search_type="date"
        ),
        OperationParameter(
            "return", "out", 1, "1", "A searchset Bundle, newest first per code.", type="Bundle"
        ),
    ),
)

RESOURCES: Mapping[str, ResourceSearch] = MappingProxyType(
    {
        "Observation": ResourceSearch(
            "Observation",
            OBSERVATION_PARAMETERS,
            sort_fields=("date", "_lastUpdated", "_id"),
            patient_compartment="patient",
            includes=("Observation:patient", "Observation:device"),
            operations=(LASTN,),
        ),
        "Patient": ResourceSearch(
            "Patient",
            PATIENT_PARAMETERS,
            sort_fields=("_lastUpdated", "_id"),
            patient_compartment="_id",
        ),
        "Device": ResourceSearch(
            "Device",
            DEVICE_PARAMETERS,
            sort_fields=("_lastUpdated", "_id"),
            patient_compartment="patient",
        ),
    }
)

TOTAL_MODES = ("none", "estimate", "accurate")

RESULT_PARAMETERS = (
    ResultParameter("_count", "number", "Page size, default 50, at most 1000; 0 = only the total."),
    ResultParameter(
        "_sort",
        "string",
        "One key from the type's sort fields, `-` for descending; default _id ascending.",
    ),
    ResultParameter("_total", "token", "Whether Bundle.total is computed.", TOTAL_MODES),
    ResultParameter(
        "_summary", "token", "count = only the total; false = full resources.", ("count", "false")
    ),
    ResultParameter(
        "_elements", "string", "Comma list of top-level elements to return (SUBSETTED)."
    ),
    ResultParameter("_include", "special", "Referenced resources to add (see searchInclude)."),
    ResultParameter("_format", "special", "json or application/fhir+json; overrides Accept."),
)


def resource_search(resource_type: str) -> ResourceSearch | None:
    """The registry entry for a type, or None when the type is not searchable here."""
    return RESOURCES.get(resource_type)


def searchable_types() -> tuple[str, ...]:
    return tuple(RESOURCES)
