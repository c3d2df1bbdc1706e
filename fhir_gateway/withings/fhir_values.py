"""FHIR building blocks shared by the Withings mappings: exact numbers, codings, devices. Pure.

Numbers: Withings sends `value × 10^unit` (§3.3). We compute it with Decimal and emit a JSON
number (int when the exponent is ≥ 0, else the float whose repr is exactly the decimal's digits:
118003, -3 → 118.003). A float cannot carry trailing zeros (7520, -2 → 75.20 becomes 75.2), and
neither fhir.resources nor orjson would keep them, so when digits are lost the Quantity's value
carries the core extension `quantity-precision` (R4 extension on decimal: "number of significant
decimal places") with the source precision: nothing the device reported is lost, and the value
stays a plain JSON number for search and clients.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeGuard

from fhir_gateway.withings import identity

Resource = dict[str, Any]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
PRECISION_EXTENSION = "http://hl7.org/fhir/StructureDefinition/quantity-precision"
# US Core "Writing Vital Signs": data entered by the patient is tagged patient-supplied.
PATIENT_SUPPLIED_TAG = {
    "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-tags",
    "code": "patient-supplied",
    "display": "Patient Supplied",
}
_CATEGORY_DISPLAY = {
    "vital-signs": "Vital Signs",
    "exam": "Exam",
    "activity": "Activity",
    "laboratory": "Laboratory",
}
_YEAR_10000 = 253402300800


@dataclass(frozen=True, slots=True)
class Normalised:
    """What one batch of Withings rows became, plus what was left out and why."""

    resources: list[Resource] = field(default_factory=list)
    devices: list[Resource] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    unknown_types: set[int] = field(default_factory=set)
    _ids: set[str] = field(default_factory=set, repr=False, compare=False)

    def add(self, resource: Resource) -> None:
        """Append unless a resource with that id is already in this batch (first one wins)."""
        if resource["id"] in self._ids:
            self.skipped["duplicate"] += 1
            return
        self._ids.add(resource["id"])
        self.resources.append(resource)

    def add_device(self, device: Resource) -> None:
        if all(known["id"] != device["id"] for known in self.devices):
            self.devices.append(device)


def patient_resource(userid: str) -> Resource:
    """The Patient for a Withings user: an identifier and nothing we do not know."""
    return {
        "resourceType": "Patient",
        "id": identity.patient_id(userid),
        "identifier": [{"system": identity.USER_IDENTIFIER_SYSTEM, "value": userid}],
    }


# ---------------------------------------------------------------- values


def fhir_instant(epoch: int) -> str:
    """1693651151 → '2023-09-02T10:39:11Z'."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _places(text: str) -> int:
    """Digits after the decimal point of a number's text: '75.2' → 1, '1e-05' → 5."""
    exponent = Decimal(text).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def json_number(amount: Decimal) -> tuple[int | float, int | None]:
    """(JSON number, precision to record or None): Decimal('75.20') → (75.2, 2)."""
    places = _places(str(amount))
    if places == 0:
        return int(amount), None
    number = float(amount)
    return number, (places if _places(repr(number)) < places else None)


def ucum_quantity(amount: Decimal, ucum: str | None, unit: str | None) -> Resource:
    number, precision = json_number(amount)
    quantity: Resource = {"value": number}
    if precision is not None:
        quantity["_value"] = {
            "extension": [{"url": PRECISION_EXTENSION, "valueInteger": precision}]
        }
    if ucum is not None:
        quantity.update(unit=unit or ucum, system=UCUM, code=ucum)
    return quantity


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_epoch(value: object) -> TypeGuard[int]:
    """Unix seconds that a FHIR instant can show (years 1970-9999)."""
    return is_int(value) and 0 <= value < _YEAR_10000


def exact_decimal(value: object) -> Decimal | None:
    """A JSON number as an exact Decimal (floats through their repr: 1028.559 stays 1028.559)."""
    if is_int(value):
        return Decimal(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return Decimal(repr(value))
    return None


def make_coding(system: str, code: str, display: str | None) -> Resource:
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def category_list(code: str) -> list[Resource]:
    display = _CATEGORY_DISPLAY.get(code)
    return [{"coding": [make_coding(OBSERVATION_CATEGORY, code, display)]}]


def device_resource(row: Mapping[str, Any], patient: str) -> Resource | None:
    """Device from a row's deviceid/model/modelid; None for manual or imported data."""
    deviceid = row.get("deviceid")
    if not isinstance(deviceid, str) or not deviceid:
        return None
    device: Resource = {
        "resourceType": "Device",
        "id": identity.device_id(deviceid),
        "identifier": [{"system": identity.DEVICE_IDENTIFIER_SYSTEM, "value": deviceid}],
    }
    if row.get("brand", 1) == 1:  # brand 18 = data imported from another vendor (§4.1)
        device["manufacturer"] = "Withings"
    if isinstance(row.get("model"), str) and row["model"]:
        device["deviceName"] = [{"name": row["model"], "type": "model-name"}]
    if is_int(row.get("modelid")):
        device["modelNumber"] = str(row["modelid"])
    device["patient"] = {"reference": patient}
    return device
