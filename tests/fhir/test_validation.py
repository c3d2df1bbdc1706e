"""Write-time validation: fhir.resources structure and the core vital-signs profile rules."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from fhir_gateway.errors import InvalidResource
from fhir_gateway.fhir.validation import validate_resource, validate_vital_signs

UCUM = "http://unitsofmeasure.org"
VITAL_SIGNS_CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
        }
    ]
}


def weight() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "wm-1-1",
        "meta": {
            "profile": [
                "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                "http://hl7.org/fhir/StructureDefinition/bodyweight",
            ]
        },
        "status": "final",
        "category": [VITAL_SIGNS_CATEGORY],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/withings-1"},
        "effectiveDateTime": "2023-09-02T10:39:11Z",
        "valueQuantity": {"value": 75.2, "unit": "kg", "system": UCUM, "code": "kg"},
    }


def blood_pressure() -> dict[str, Any]:
    def part(code: str, value: int) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    panel = weight()
    del panel["valueQuantity"]
    panel["meta"]["profile"][1] = "http://hl7.org/fhir/StructureDefinition/bp"
    panel["code"]["coding"][0]["code"] = "85354-9"
    panel["component"] = [part("8480-6", 120), part("8462-4", 80)]
    return panel


def test_valid_resources_pass() -> None:
    validate_resource(weight())
    validate_vital_signs(weight())
    validate_resource(blood_pressure())
    validate_vital_signs(blood_pressure())


@pytest.mark.parametrize(
    "resource",
    [
        {**weight(), "bogus": "s3cr3t-value"},  # unknown element
        {key: value for key, value in weight().items() if key != "status"},
        {key: value for key, value in weight().items() if key != "code"},
        {**weight(), "effectiveDateTime": "2023-09-02T10:39:11"},  # no offset
        {**weight(), "id": "not an id!"},
        {**weight(), "valueQuantity": {"value": "s3cr3t-value"}},
        {"resourceType": "NoSuchType"},
        {"id": "x"},
    ],
)
def test_invalid_resources_raise_a_short_safe_error(resource: dict[str, Any]) -> None:
    with pytest.raises(InvalidResource) as caught:
        validate_resource(resource)
    message = str(caught.value)
    assert "s3cr3t" not in message
    assert len(message) < 300
    assert caught.value.status == 422


def test_error_names_the_element() -> None:
    with pytest.raises(InvalidResource, match="bogus: extra_forbidden"):
        validate_resource({**weight(), "bogus": 1})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = resource
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()

WEIGHT_BREAKAGES = {
    "no status": _set("status", _DELETE),
    "bogus status": _set("status", "bogus"),
    "no category": _set("category", _DELETE),
    "exam category": _set("category.0.coding.0.code", "exam"),
    "no LOINC": _set("code.coding.0.system", "https://example.org/local"),
    "profile code mismatch": _set("code.coding.0.code", "8867-4"),
    "subject is a device": _set("subject", {"reference": "Device/withings-1"}),
    "subject is not a reference": _set("subject", "Patient/withings-1"),
    "no effective": _set("effectiveDateTime", _DELETE),
    "year-only effective (vs-1)": _set("effectiveDateTime", "2023"),
    "no value (vs-2)": _set("valueQuantity", _DELETE),
    "no UCUM code": _set("valueQuantity.code", _DELETE),
    "not UCUM": _set("valueQuantity.system", "http://example.org/units"),
    "unit outside ucum-vitals-common": _set("valueQuantity.code", "mg"),
    "unit of another vital sign": _set("valueQuantity.code", "cm"),
    "no value in quantity": _set("valueQuantity.value", _DELETE),
}


@pytest.mark.parametrize("breakage", WEIGHT_BREAKAGES.values(), ids=WEIGHT_BREAKAGES.keys())
def test_vital_signs_rules_on_weight(breakage: Callable[[dict[str, Any]], None]) -> None:
    resource = copy.deepcopy(weight())
    breakage(resource)
    with pytest.raises(InvalidResource):
        validate_vital_signs(resource)


def test_data_absent_reason_satisfies_vs2() -> None:
    resource = weight()
    del resource["valueQuantity"]
    resource["dataAbsentReason"] = {"coding": [{"code": "unknown"}]}
    validate_vital_signs(resource)


BP_BREAKAGES = {
    "no diastolic": _set("component.1", _DELETE),
    "two systolic": _set("component.1.code.coding.0.code", "8480-6"),
    "component without value (vs-3)": _set("component.1.valueQuantity", _DELETE),
    "component in kPa": _set("component.0.valueQuantity.code", "kPa"),
    "component in /min": _set("component.0.valueQuantity.code", "/min"),
    "component without LOINC": _set("component.0.code.coding.0.system", "urn:x"),
}


@pytest.mark.parametrize("breakage", BP_BREAKAGES.values(), ids=BP_BREAKAGES.keys())
def test_vital_signs_rules_on_blood_pressure(breakage: Callable[[dict[str, Any]], None]) -> None:
    resource = copy.deepcopy(blood_pressure())
    breakage(resource)
    with pytest.raises(InvalidResource):
        validate_vital_signs(resource)


def test_absent_bp_component_with_reason_is_allowed() -> None:
    resource = blood_pressure()
    del resource["component"][1]["valueQuantity"]
    resource["component"][1]["dataAbsentReason"] = {"coding": [{"code": "unknown"}]}
    validate_resource(resource)
    validate_vital_signs(resource)


@pytest.mark.parametrize(
    ("loinc", "profile", "unit"),
    [
        ("8867-4", "heartrate", "/min"),
        ("8310-5", "bodytemp", "Cel"),
        ("8310-5", "bodytemp", "[degF]"),
        ("8302-2", "bodyheight", "cm"),
        ("2708-6", "oxygensat", "%"),
    ],
)
def test_other_core_vital_signs(loinc: str, profile: str, unit: str) -> None:
    resource = weight()
    resource["meta"]["profile"][1] = f"http://hl7.org/fhir/StructureDefinition/{profile}"
    resource["code"]["coding"][0]["code"] = loinc
    resource["valueQuantity"].update(code=unit, unit=unit)
    validate_vital_signs(resource)
    resource["valueQuantity"]["code"] = "kg"
    with pytest.raises(InvalidResource):
        validate_vital_signs(resource)
