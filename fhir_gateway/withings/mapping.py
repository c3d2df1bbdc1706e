"""Withings measure groups, daily activity and sleep summaries → FHIR R4 resources. Pure.

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_gateway.withings import identity
from fhir_gateway.withings.meastypes import (
    ACTIVITY_FIELDS,
    AFIB_RESULTS,
    BLOOD_PRESSURE_PANEL,
    DIASTOLIC,
    MEASTYPE_BY_TYPE,
    POSITIONS,
    SLEEP_FIELDS,
    SYSTOLIC,
    VITALSIGNS_PROFILE,
    MeasType,
    SummaryField,
)

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
_MANUAL_ATTRIBS = frozenset({2, 4})  # §3.4: entered by the user (4: at account creation)
_AMBIGUOUS_ATTRIB = 1  # §3.4: the device could not tell which user stood on it
_REAL, _GOAL = 1, 2  # group category (§3.1)
_MAX_EXPONENT = 20  # Withings uses about -8..0; anything wilder is corrupt data
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


def _instant(epoch: int) -> str:
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


def _quantity(amount: Decimal, ucum: str | None, unit: str | None) -> Resource:
    number, precision = json_number(amount)
    quantity: Resource = {"value": number}
    if precision is not None:
        quantity["_value"] = {
            "extension": [{"url": PRECISION_EXTENSION, "valueInteger": precision}]
        }
    if ucum is not None:
        quantity.update(unit=unit or ucum, system=UCUM, code=ucum)
    return quantity


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_epoch(value: object) -> TypeGuard[int]:
    """Unix seconds that a FHIR instant can show (years 1970-9999)."""
    return _is_int(value) and 0 <= value < _YEAR_10000


def _decimal(value: object) -> Decimal | None:
    """A JSON number as an exact Decimal (floats through their repr: 1028.559 stays 1028.559)."""
    if _is_int(value):
        return Decimal(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return Decimal(repr(value))
    return None


def _coding(system: str, code: str, display: str | None) -> Resource:
    coding = {"system": system, "code": code}
    if display is not None:
        coding["display"] = display
    return coding


def _category(code: str) -> list[Resource]:
    display = _CATEGORY_DISPLAY.get(code)
    return [{"coding": [_coding(OBSERVATION_CATEGORY, code, display)]}]


def _meastype_coding(meastype: int, row: MeasType | None) -> Resource:
    name = row.name if row is not None else f"Withings meastype {meastype}"
    return _coding(identity.WITHINGS_MEASTYPE_SYSTEM, str(meastype), name)


def _loinc_codings(row: MeasType | None) -> list[Resource]:
    if row is None or row.loinc is None:
        return []
    return [_coding(LOINC, code, display) for code, display in (row.loinc, *row.also_loinc)]


def _body_site(position: int) -> Resource:
    name = POSITIONS.get(position)
    coding = _coding(identity.WITHINGS_POSITION_SYSTEM, str(position), name)
    return {"coding": [coding], "text": name or f"Withings position {position}"}


# ---------------------------------------------------------------- measure groups


@dataclass(frozen=True, slots=True)
class _Measure:
    type: int
    amount: Decimal  # value × 10^unit, before any table scaling
    position: int | None


@dataclass(frozen=True, slots=True)
class _Group:
    """The parts of a measure group that every Observation made from it shares."""

    grpid: int
    patient: str  # "Patient/<id>"
    effective: str
    issued: str | None
    device: str | None  # "Device/<id>"
    patient_reported: bool


def _observation(
    group: _Group, id_: str, key: str, row: MeasType | None, code: Resource
) -> Resource:
    """The common skeleton; the caller adds the value."""
    meta: Resource = {}
    if row is not None and row.is_vital_sign and row.profile is not None:
        meta["profile"] = [VITALSIGNS_PROFILE, row.profile]
    if group.patient_reported:
        meta["tag"] = [PATIENT_SUPPLIED_TAG]
    observation: Resource = {"resourceType": "Observation", "id": id_}
    if meta:
        observation["meta"] = meta
    observation["identifier"] = [{"system": identity.MEASURE_IDENTIFIER_SYSTEM, "value": key}]
    observation["status"] = "final"
    if row is not None:
        observation["category"] = _category(row.category)
    observation["code"] = code
    observation["subject"] = {"reference": group.patient}
    observation["effectiveDateTime"] = group.effective
    if group.issued is not None:
        observation["issued"] = group.issued
    if group.patient_reported:
        observation["performer"] = [{"reference": group.patient}]
    if group.device is not None:
        observation["device"] = {"reference": group.device}
    return observation


def _scaled(measure: _Measure, row: MeasType) -> Decimal:
    amount = measure.amount
    if row.small_value_limit is not None and 0 < amount <= row.small_value_limit:
        amount = amount.scaleb(row.small_value_scale)
    return amount.scaleb(row.scale) if row.scale else amount


def _single(group: _Group, measure: _Measure, out: Normalised) -> Resource | None:
    row = MEASTYPE_BY_TYPE.get(measure.type)
    coding = _meastype_coding(measure.type, row)
    observation = _observation(
        group,
        identity.measure_observation_id(group.grpid, measure.type, measure.position),
        identity.measure_key(group.grpid, measure.type, measure.position),
        row,
        {"coding": [*_loinc_codings(row), coding], "text": coding["display"]},
    )
    if row is None:
        out.unknown_types.add(measure.type)
        observation["valueQuantity"] = _quantity(measure.amount, None, None)
    elif row.kind == "afib-code":
        if measure.amount != measure.amount.to_integral_value():
            out.skipped["malformed"] += 1
            return None
        result = int(measure.amount)
        display = AFIB_RESULTS.get(result)
        observation["valueCodeableConcept"] = {
            "coding": [_coding(identity.WITHINGS_AFIB_SYSTEM, str(result), display)],
            "text": display or f"Withings AFib result {result}",
        }
    else:
        observation["valueQuantity"] = _quantity(_scaled(measure, row), row.ucum, row.unit)
    if measure.position is not None:
        observation["bodySite"] = _body_site(measure.position)
    return observation


def _blood_pressure(group: _Group, pair: Mapping[int, _Measure]) -> Resource:
    """One 85354-9 panel from systolic 10 and diastolic 9 of one group (and one position)."""
    position = next(iter(pair.values())).position
    codings = [_coding(LOINC, *BLOOD_PRESSURE_PANEL)]
    components = []
    for meastype in (SYSTOLIC, DIASTOLIC):
        row = MEASTYPE_BY_TYPE[meastype]
        code = {"coding": [*_loinc_codings(row), _meastype_coding(meastype, row)]}
        measure = pair.get(meastype)
        if measure is None:
            # The core bp profile requires both components; a missing one is "unknown" (vs-3).
            absent = {"coding": [_coding(DATA_ABSENT_REASON, "unknown", "Unknown")]}
            components.append({"code": code, "dataAbsentReason": absent})
            continue
        # The panel also carries the Withings codings, so `code=<meastype system>|10` finds it.
        codings.append(_meastype_coding(meastype, row))
        quantity = _quantity(_scaled(measure, row), row.ucum, row.unit)
        components.append({"code": code, "valueQuantity": quantity})
    observation = _observation(
        group,
        identity.blood_pressure_observation_id(group.grpid, position),
        identity.blood_pressure_key(group.grpid, position),
        MEASTYPE_BY_TYPE[SYSTOLIC],  # vital-signs + the bp profile
        {"coding": codings, "text": "Blood pressure"},
    )
    if position is not None:
        observation["bodySite"] = _body_site(position)
    observation["component"] = components
    return observation


def _device(row: Mapping[str, Any], patient: str) -> Resource | None:
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
    if _is_int(row.get("modelid")):
        device["modelNumber"] = str(row["modelid"])
    device["patient"] = {"reference": patient}
    return device


def _measures(raw: object, out: Normalised) -> list[_Measure]:
    """Well-formed measures of a group; the same (type, position) twice keeps the first."""
    measures: dict[tuple[int, int | None], _Measure] = {}
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            out.skipped["malformed"] += 1
            continue
        meastype, value, unit = item.get("type"), item.get("value"), item.get("unit")
        position = item.get("position")
        if not (_is_int(meastype) and _is_int(value) and _is_int(unit)) or not (
            position is None or _is_int(position)
        ):
            out.skipped["malformed"] += 1
            continue
        if abs(unit) > _MAX_EXPONENT:
            out.skipped["malformed"] += 1
            continue
        key = (meastype, position)
        if key in measures:
            # Body Scan repeats 5 and 8 at position 7 with identical values (§3.2).
            out.skipped["duplicate"] += 1
            continue
        measures[key] = _Measure(meastype, Decimal(value).scaleb(unit), position)
    return list(measures.values())


def normalise_measure_groups(
    groups: Iterable[Mapping[str, Any]],
    *,
    userid: str,
    patient_id: str,
    timezone: str | None,
) -> Normalised:
    """getmeas `measuregrps` → Observations (+ Devices). Instants stay UTC (§3.2), so the
    profile `timezone` is not applied; `userid` is not needed because grpids are global."""
    out = Normalised()
    patient = f"Patient/{patient_id}"
    for raw in groups:
        grpid, taken = raw.get("grpid"), raw.get("date")
        if not (_is_int(grpid) and _is_epoch(taken)):
            out.skipped["malformed"] += 1
            continue
        category = raw.get("category", _REAL)
        if category == _GOAL:
            out.skipped["goal"] += 1
            continue
        if category != _REAL:
            out.skipped["unknown-category"] += 1
            continue
        attrib = raw.get("attrib")
        if attrib == _AMBIGUOUS_ATTRIB:
            out.skipped["ambiguous"] += 1
            continue
        device = _device(raw, patient)
        if device is not None:
            out.add_device(device)
        created = raw.get("created")
        group = _Group(
            grpid=grpid,
            patient=patient,
            effective=_instant(taken),
            issued=_instant(created) if _is_epoch(created) else None,
            device=f"Device/{device['id']}" if device is not None else None,
            patient_reported=_is_int(attrib) and attrib in _MANUAL_ATTRIBS,
        )
        pressures: dict[int | None, dict[int, _Measure]] = {}
        for measure in _measures(raw.get("measures"), out):
            if measure.type in (SYSTOLIC, DIASTOLIC):
                pressures.setdefault(measure.position, {})[measure.type] = measure
                continue
            observation = _single(group, measure, out)
            if observation is not None:
                out.add(observation)
        for pair in pressures.values():
            out.add(_blood_pressure(group, pair))
    return out


# ---------------------------------------------------------------- daily activity and sleep


def _local_day(day: date, zone_name: object) -> Resource:
    """The user-local day [00:00, next 00:00) with offsets; date precision if the zone is unknown.

    Example: 2023-10-29 in Europe/Amsterdam → 2023-10-29T00:00:00+02:00 .. 2023-10-30T00:00:00+01:00
    """
    try:
        zone = ZoneInfo(zone_name) if isinstance(zone_name, str) and zone_name else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    if zone is None:
        return {"start": day.isoformat(), "end": day.isoformat()}
    start = datetime.combine(day, time(), zone)
    end = datetime.combine(day + timedelta(days=1), time(), zone)
    return {"start": start.isoformat(), "end": end.isoformat()}


@dataclass(frozen=True, slots=True)
class _Context:
    """What all metrics of one activity day or one night share."""

    patient: str  # "Patient/<id>"
    period: Mapping[str, str]
    issued: str | None
    device: str | None  # "Device/<id>"


def _metric(row: Mapping[str, Any], name: str) -> Decimal | None:
    """A numeric field, or None when absent or negative (-1 marks 'not measured', §4.5)."""
    amount = _decimal(row.get(name))
    return amount if amount is not None and amount >= 0 else None


def _add_metrics(
    out: Normalised,
    values: Mapping[str, Any],
    fields: tuple[SummaryField, ...],
    context: _Context,
    names: Callable[[str], tuple[str, Resource]],  # field → (id, identifier)
    code_system: str,
) -> None:
    """One Observation per present field of `values`, sharing `context`."""
    for metric in fields:
        amount = _metric(values, metric.field)
        if amount is None:
            continue
        id_, identifier = names(metric.field)
        local = _coding(code_system, metric.field, metric.display)
        codings = [_coding(LOINC, *metric.loinc), local] if metric.loinc else [local]
        observation: Resource = {
            "resourceType": "Observation",
            "id": id_,
            "identifier": [identifier],
            "status": "final",
            "category": _category("activity"),
            "code": {"coding": codings, "text": metric.display},
            "subject": {"reference": context.patient},
            "effectivePeriod": dict(context.period),
        }
        if context.issued is not None:
            observation["issued"] = context.issued
        if context.device is not None:
            observation["device"] = {"reference": context.device}
        scaled = amount.scaleb(metric.scale)
        observation["valueQuantity"] = _quantity(scaled, metric.ucum, metric.unit)
        out.add(observation)


def normalise_activity(
    rows: Iterable[Mapping[str, Any]], *, userid: str, patient_id: str
) -> Normalised:
    """getactivity rows → one Observation per metric per user-local day (§4.1)."""
    out = Normalised()
    patient = f"Patient/{patient_id}"
    for row in rows:
        try:
            day = date.fromisoformat(row["date"]).isoformat()
        except (KeyError, TypeError, ValueError):
            out.skipped["malformed"] += 1
            continue
        device = _device(row, patient)
        if device is not None:
            out.add_device(device)
        modified = row.get("modified")
        context = _Context(
            patient=patient,
            period=_local_day(date.fromisoformat(day), row.get("timezone")),
            issued=_instant(modified) if _is_epoch(modified) else None,
            device=f"Device/{device['id']}" if device is not None else None,
        )

        def names(name: str, day: str = day) -> tuple[str, Resource]:
            key = identity.activity_key(userid, day, name)
            identifier = {"system": identity.ACTIVITY_IDENTIFIER_SYSTEM, "value": key}
            return identity.activity_observation_id(userid, day, name), identifier

        _add_metrics(out, row, ACTIVITY_FIELDS, context, names, identity.WITHINGS_ACTIVITY_SYSTEM)
    return out


def normalise_sleep_summaries(
    rows: Iterable[Mapping[str, Any]], *, userid: str, patient_id: str
) -> Normalised:
    """sleep getsummary rows → one Observation per metric per night, over startdate→enddate.

    No Device: summaries carry only `hash_deviceid`, which is not the deviceid getmeas uses.
    """
    out = Normalised()
    patient = f"Patient/{patient_id}"
    for row in rows:
        sleepid, start, end, data = (row.get(k) for k in ("id", "startdate", "enddate", "data"))
        if not (
            _is_int(sleepid) and _is_epoch(start) and _is_epoch(end) and isinstance(data, dict)
        ):
            out.skipped["malformed"] += 1
            continue
        updated = row.get("modified", row.get("created"))
        context = _Context(
            patient=patient,
            period={"start": _instant(start), "end": _instant(end)},
            issued=_instant(updated) if _is_epoch(updated) else None,
            device=None,
        )

        def names(name: str, sleepid: int = sleepid) -> tuple[str, Resource]:
            key = identity.sleep_key(sleepid, name)
            identifier = {"system": identity.SLEEP_IDENTIFIER_SYSTEM, "value": key}
            return identity.sleep_observation_id(userid, sleepid, name), identifier

        _add_metrics(out, data, SLEEP_FIELDS, context, names, identity.WITHINGS_SLEEP_SYSTEM)
    return out
