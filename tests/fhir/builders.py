"""Hand-built, valid FHIR resources for API tests (the Withings mapping has its own tests)."""

from __future__ import annotations

from typing import Any

from fhir_gateway.store.base import Store

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
WITHINGS = "https://fhir-gateway.dev/fhir/CodeSystem/withings-meastype"


def patient(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [
            {"system": "https://fhir-gateway.dev/fhir/sid/withings-user", "value": patient_id}
        ],
        "active": True,
    }


def device(device_id: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": device_id,
        "identifier": [
            {"system": "https://fhir-gateway.dev/fhir/sid/withings-device", "value": device_id}
        ],
        "manufacturer": "Withings",
        "deviceName": [{"name": "Body+", "type": "model-name"}],
        "patient": {"reference": f"Patient/{patient_id}"},
    }


def observation(
    obs_id: str,
    patient_id: str,
    *,
    loinc: str,
    withings_type: int,
    effective: str | None = None,
    period: dict[str, str] | None = None,
    value: float | None = None,
    unit: str = "kg",
    category: str = "vital-signs",
    device_id: str | None = None,
    components: list[tuple[str, float]] | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {
            "coding": [
                {"system": LOINC, "code": loinc},
                {"system": WITHINGS, "code": str(withings_type)},
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if effective is not None:
        resource["effectiveDateTime"] = effective
    if period is not None:
        resource["effectivePeriod"] = period
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if components:
        resource["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
            }
            for code, v in components
        ]
    if device_id is not None:
        resource["device"] = {"reference": f"Device/{device_id}"}
    return resource


def alice_and_bob() -> list[dict[str, Any]]:
    """Two patients, a device each, and a small but varied set of Observations."""
    resources: list[dict[str, Any]] = [
        patient("alice"),
        patient("bob"),
        device("scale-a", "alice"),
        device("cuff-b", "bob"),
    ]
    # Alice: daily weights 2024-05-01 .. 2024-05-10 at 07:30Z, 70.0 .. 70.9 kg.
    for day in range(1, 11):
        resources.append(
            observation(
                f"alice-weight-{day:02d}",
                "alice",
                loinc="29463-7",
                withings_type=1,
                effective=f"2024-05-{day:02d}T07:30:00Z",
                value=round(70 + (day - 1) / 10, 1),
                device_id="scale-a",
            )
        )
    # Alice: heart rate on three days.
    for day, bpm in ((2, 61), (5, 75), (9, 88)):
        resources.append(
            observation(
                f"alice-hr-{day:02d}",
                "alice",
                loinc="8867-4",
                withings_type=11,
                effective=f"2024-05-{day:02d}T08:00:00+02:00",
                value=bpm,
                unit="/min",
            )
        )
    # Alice: blood pressure panels.
    for day, (sys_, dia) in ((3, (118, 76)), (6, (145, 92)), (8, (131, 85))):
        resources.append(
            observation(
                f"alice-bp-{day:02d}",
                "alice",
                loinc="85354-9",
                withings_type=10,
                effective=f"2024-05-{day:02d}T09:00:00Z",
                components=[("8480-6", sys_), ("8462-4", dia)],
            )
        )
    # Alice: a closed sleep period across midnight and an open-ended one.
    resources.append(
        observation(
            "alice-sleep-closed",
            "alice",
            loinc="93832-4",
            withings_type=9001,
            period={"start": "2024-05-04T22:30:00Z", "end": "2024-05-05T06:10:00Z"},
            value=27600,
            unit="s",
            category="activity",
        )
    )
    resources.append(
        observation(
            "alice-sleep-open",
            "alice",
            loinc="93832-4",
            withings_type=9001,
            period={"start": "2024-05-10T23:00:00Z"},
            category="activity",
        )
    )
    # Bob: weights on the same days as Alice, so compartment leaks would show.
    for day in range(1, 6):
        resources.append(
            observation(
                f"bob-weight-{day:02d}",
                "bob",
                loinc="29463-7",
                withings_type=1,
                effective=f"2024-05-{day:02d}T07:30:00Z",
                value=90 + day,
                device_id="cuff-b",
            )
        )
    return resources


async def seed_observations(store: Store) -> list[dict[str, Any]]:
    resources = alice_and_bob()
    await store.upsert(resources)
    return resources
