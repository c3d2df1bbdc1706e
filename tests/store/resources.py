"""Realistic FHIR R4 resources, built by hand, that the contract tests store and search."""

from __future__ import annotations

from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
WITHINGS_MEASTYPE = "https://developer.withings.com/api-reference#meastype"
WITHINGS_GRPID = "https://wbsapi.withings.net/measure/grpid"

WEIGHT = (LOINC, "29463-7")
BLOOD_PRESSURE = (LOINC, "85354-9")
SYSTOLIC = (LOINC, "8480-6")
DIASTOLIC = (LOINC, "8462-4")
STEPS = (LOINC, "55423-8")
HEART_RATE = (LOINC, "8867-4")

Resource = dict[str, Any]


def _category(code: str) -> list[Resource]:
    return [{"coding": [{"system": CATEGORY_SYSTEM, "code": code}]}]


def _base(id_: str, patient: str, code: tuple[str, str], display: str, category: str) -> Resource:
    return {
        "resourceType": "Observation",
        "id": id_,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "status": "final",
        "category": _category(category),
        "code": {"coding": [{"system": code[0], "code": code[1], "display": display}]},
        "subject": {"reference": f"Patient/{patient}"},
        "identifier": [{"system": WITHINGS_GRPID, "value": f"grp-{id_}"}],
    }


def weight(id_: str, patient: str, when: str, kg: float, device: str | None = None) -> Resource:
    """A Withings scale measure: LOINC body weight with a UCUM kg valueQuantity."""
    resource = _base(id_, patient, WEIGHT, "Body weight", "vital-signs")
    resource["code"]["coding"].append({"system": WITHINGS_MEASTYPE, "code": "1"})
    resource["effectiveDateTime"] = when
    resource["valueQuantity"] = {"value": kg, "unit": "kg", "system": UCUM, "code": "kg"}
    if device is not None:
        resource["device"] = {"reference": f"Device/{device}"}
    return resource


def heart_rate(id_: str, patient: str, when: str, bpm: float) -> Resource:
    """Heart rate whose unit text ('beats/minute') differs from its UCUM code ('/min')."""
    resource = _base(id_, patient, HEART_RATE, "Heart rate", "vital-signs")
    resource["effectiveDateTime"] = when
    resource["valueQuantity"] = {
        "value": bpm,
        "unit": "beats/minute",
        "system": UCUM,
        "code": "/min",
    }
    return resource


def blood_pressure(
    id_: str, patient: str, when: str, systolic: float, diastolic: float
) -> Resource:
    """A BP panel: no value of its own, systolic and diastolic as components in mm[Hg]."""
    resource = _base(id_, patient, BLOOD_PRESSURE, "Blood pressure panel", "vital-signs")
    resource["effectiveDateTime"] = when
    resource["component"] = [
        {
            "code": {"coding": [{"system": SYSTOLIC[0], "code": SYSTOLIC[1]}]},
            "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": DIASTOLIC[0], "code": DIASTOLIC[1]}]},
            "valueQuantity": {
                "value": diastolic,
                "unit": "mmHg",
                "system": UCUM,
                "code": "mm[Hg]",
            },
        },
    ]
    return resource


def steps(id_: str, patient: str, start: str, end: str | None, count: int) -> Resource:
    """Daily activity over an effectivePeriod; `end` None is a period still open (in progress)."""
    resource = _base(id_, patient, STEPS, "Number of steps", "activity")
    resource["effectivePeriod"] = {"start": start} if end is None else {"start": start, "end": end}
    resource["valueQuantity"] = {"value": count, "unit": "steps", "system": UCUM, "code": "{steps}"}
    return resource


def note(id_: str, patient: str, text: str) -> Resource:
    """An Observation with a text-only code (no coding, so no code token) and no category."""
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
        "valueString": text,
    }


def local_code(id_: str, patient: str, when: str, code: str) -> Resource:
    """An Observation whose coding has no system (token `|code`)."""
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
    }


def patient(id_: str, family: str) -> Resource:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}


def device(id_: str, patient_id: str, mac: str) -> Resource:
    return {
        "resourceType": "Device",
        "id": id_,
        "identifier": [{"system": "urn:withings:mac", "value": mac}],
        "patient": {"reference": f"Patient/{patient_id}"},
    }
