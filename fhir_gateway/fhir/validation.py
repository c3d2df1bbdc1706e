"""Write-time validation: fhir.resources R4B structure, plus the core vital-signs profile rules.

This is the only module that imports fhir.resources (the models cost ~0.3 s to import and
~0.3 ms per resource, so they are used once, on write, never on the read path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_gateway.errors import InvalidResource

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITALSIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
_PROFILE_BASE = "http://hl7.org/fhir/StructureDefinition/"

# FHIR R4 Observation.status, a required binding fhir.resources does not check.
_OBSERVATION_STATUS = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled",
     "entered-in-error", "unknown"}
)  # fmt: skip

# ValueSet ucum-vitals-common (required binding of vitalsigns valueQuantity.code in R4).
VITAL_SIGN_UNITS = frozenset(
    {"%", "cm", "[in_i]", "kg", "g", "[lb_av]", "Cel", "[degF]", "mm[Hg]", "/min", "kg/m2", "m2"}
)

# The vital signs of observation-vitalsignresult with their core profile and allowed UCUM codes
# (https://hl7.org/fhir/R4/observation-vitalsigns.html). Panels have no value of their own.
VITAL_SIGNS: dict[str, tuple[str, frozenset[str]]] = {
    "85353-1": ("vitalspanel", frozenset()),
    "9279-1": ("resprate", frozenset({"/min"})),
    "8867-4": ("heartrate", frozenset({"/min"})),
    "2708-6": ("oxygensat", frozenset({"%"})),
    "59408-5": ("oxygensat", frozenset({"%"})),  # US Core pulse oximetry, alongside 2708-6
    "8310-5": ("bodytemp", frozenset({"Cel", "[degF]"})),
    "8302-2": ("bodyheight", frozenset({"cm", "[in_i]"})),
    "9843-4": ("headcircum", frozenset({"cm", "[in_i]"})),
    "29463-7": ("bodyweight", frozenset({"kg", "g", "[lb_av]"})),
    "39156-5": ("bmi", frozenset({"kg/m2"})),
    "85354-9": ("bp", frozenset()),
}
# The LOINC code each specific profile fixes in Observation.code.
PROFILE_CODES: dict[str, str] = {
    f"{_PROFILE_BASE}{name}": code
    for code, (name, _units) in VITAL_SIGNS.items()
    if code != "59408-5"
}
BP_COMPONENTS = {"8480-6": frozenset({"mm[Hg]"}), "8462-4": frozenset({"mm[Hg]"})}


def validate_resource(resource: Mapping[str, Any]) -> None:
    """Raise InvalidResource unless `resource` is a structurally valid R4(B) resource."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource("resourceType is missing")
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise InvalidResource(f"unknown resourceType {resource_type[:40]!r}") from exc
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        # loc + error type only: pydantic's messages can echo input values (never in errors).
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['type']}"
            for error in exc.errors()[:3]
        ]
        more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise InvalidResource(f"invalid {resource_type}: {'; '.join(problems)}{more}") from None


def _codes(concept: Any, system: str) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [
        coding["code"]
        for coding in concept.get("coding", [])
        if isinstance(coding, dict) and coding.get("system") == system and "code" in coding
    ]


def _check_quantity(quantity: Any, allowed: frozenset[str], where: str) -> None:
    if not isinstance(quantity, dict):
        raise InvalidResource(f"vital signs: {where} needs a valueQuantity")
    for element in ("value", "unit", "code"):
        if quantity.get(element) is None:
            raise InvalidResource(f"vital signs: {where}.{element} is required")
    if quantity.get("system") != UCUM:
        raise InvalidResource(f"vital signs: {where}.system must be {UCUM}")
    if quantity["code"] not in VITAL_SIGN_UNITS or (allowed and quantity["code"] not in allowed):
        raise InvalidResource(f"vital signs: {where} unit {quantity['code']!r} not allowed")


def _check_component(component: Any, index: int) -> str | None:
    """vs-3: a component has a value or a dataAbsentReason; returns its BP LOINC code if any."""
    where = f"component[{index}]"
    if not isinstance(component, dict) or not _codes(component.get("code"), LOINC):
        raise InvalidResource(f"vital signs: {where}.code needs a LOINC coding")
    bp_code = next((c for c in _codes(component["code"], LOINC) if c in BP_COMPONENTS), None)
    if "valueQuantity" in component:
        units = BP_COMPONENTS.get(bp_code, frozenset()) if bp_code else frozenset()
        _check_quantity(component["valueQuantity"], units, where)
    elif "dataAbsentReason" not in component and not any(k.startswith("value") for k in component):
        raise InvalidResource(f"vital signs: {where} needs a value or a dataAbsentReason")
    return bp_code


def validate_vital_signs(resource: Mapping[str, Any]) -> None:
    """Raise InvalidResource unless `resource` meets the core R4 vital-signs profile rules we use.

    Checked: status, category vital-signs, LOINC code (and the one its specific profile fixes),
    subject Patient, effective[x] (vs-1: at least a day), value/component/hasMember or
    dataAbsentReason (vs-2), UCUM units from the profile's set, both BP components.
    """
    if resource.get("resourceType") != "Observation":
        raise InvalidResource("vital signs: not an Observation")
    if resource.get("status") not in _OBSERVATION_STATUS:
        raise InvalidResource("vital signs: status is missing or not an Observation status")
    if not any(
        "vital-signs" in _codes(c, OBSERVATION_CATEGORY) for c in resource.get("category", [])
    ):
        raise InvalidResource("vital signs: category vital-signs is required")
    loinc = _codes(resource.get("code"), LOINC)
    if not loinc:
        raise InvalidResource("vital signs: code needs a LOINC coding")
    meta = resource.get("meta")
    for profile in meta.get("profile", []) if isinstance(meta, dict) else []:
        fixed = PROFILE_CODES.get(profile) if isinstance(profile, str) else None
        if fixed is not None and fixed not in loinc:
            raise InvalidResource(f"vital signs: profile {profile} requires LOINC {fixed}")
    subject = resource.get("subject")
    subject = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(subject, str) or not subject.startswith("Patient/"):
        raise InvalidResource("vital signs: subject must reference a Patient")
    effective = resource.get("effectiveDateTime")
    if effective is None and not isinstance(resource.get("effectivePeriod"), dict):
        raise InvalidResource("vital signs: effectiveDateTime or effectivePeriod is required")
    if isinstance(effective, str) and len(effective) < len("YYYY-MM-DD"):
        raise InvalidResource("vital signs: effectiveDateTime must be at least a day (vs-1)")

    has_value = any(key.startswith("value") for key in resource)
    components = resource.get("component", [])
    if not (has_value or components or resource.get("hasMember") or "dataAbsentReason" in resource):
        raise InvalidResource("vital signs: value, component, hasMember or dataAbsentReason (vs-2)")
    allowed: frozenset[str] = frozenset()
    for code in loinc:
        allowed |= VITAL_SIGNS.get(code, ("", frozenset()))[1]
    if "valueQuantity" in resource:
        _check_quantity(resource["valueQuantity"], allowed, "valueQuantity")
    bp_codes = [_check_component(component, i) for i, component in enumerate(components)]
    if "85354-9" in loinc:
        for code in BP_COMPONENTS:
            if bp_codes.count(code) != 1:
                raise InvalidResource(f"vital signs: bp needs exactly one {code} component")
