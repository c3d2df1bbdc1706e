"""Withings measure groups → FHIR R4 Observations and Devices. Pure.

Activity and sleep summaries are in `summaries.py`; shared building blocks in `fhir_values.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_gateway.withings import identity
from fhir_gateway.withings.fhir_values import (
    DATA_ABSENT_REASON,
    LOINC,
    PATIENT_SUPPLIED_TAG,
    PRECISION_EXTENSION,
    Normalised,
    Resource,
    category_list,
    device_resource,
    fhir_instant,
    is_epoch,
    is_int,
    json_number,
    make_coding,
    patient_resource,
    ucum_quantity,
)
from fhir_gateway.withings.meastypes import (
    AFIB_RESULTS,
    BLOOD_PRESSURE_PANEL,
    DIASTOLIC,
    MEASTYPE_BY_TYPE,
    POSITIONS,
    SYSTOLIC,
    VITALSIGNS_PROFILE,
    MeasType,
)
from fhir_gateway.withings.summaries import normalise_activity, normalise_sleep_summaries

__all__ = [
    "PRECISION_EXTENSION",
    "Normalised",
    "json_number",
    "normalise_activity",
    "normalise_measure_groups",
    "normalise_sleep_summaries",
    "patient_resource",
]

_MANUAL_ATTRIBS = frozenset({2, 4})  # §3.4: entered by the user (4: at account creation)
_AMBIGUOUS_ATTRIB = 1  # §3.4: the device could not tell which user stood on it
_REAL, _GOAL = 1, 2  # group category (§3.1)
_MAX_EXPONENT = 20  # Withings uses about -8..0; anything wilder is corrupt data


def _meastype_coding(meastype: int, row: MeasType | None) -> Resource:
    name = row.name if row is not None else f"Withings meastype {meastype}"
    return make_coding(identity.WITHINGS_MEASTYPE_SYSTEM, str(meastype), name)


def _loinc_codings(row: MeasType | None) -> list[Resource]:
    if row is None or row.loinc is None:
        return []
    return [make_coding(LOINC, code, display) for code, display in (row.loinc, *row.also_loinc)]


def _body_site(position: int) -> Resource:
    name = POSITIONS.get(position)
    coding = make_coding(identity.WITHINGS_POSITION_SYSTEM, str(position), name)
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
        observation["category"] = category_list(row.category)
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
        observation["valueQuantity"] = ucum_quantity(measure.amount, None, None)
    elif row.kind == "afib-code":
        if measure.amount != measure.amount.to_integral_value():
            out.skipped["malformed"] += 1
            return None
        result = int(measure.amount)
        display = AFIB_RESULTS.get(result)
        observation["valueCodeableConcept"] = {
            "coding": [make_coding(identity.WITHINGS_AFIB_SYSTEM, str(result), display)],
            "text": display or f"Withings AFib result {result}",
        }
    else:
        observation["valueQuantity"] = ucum_quantity(_scaled(measure, row), row.ucum, row.unit)
    if measure.position is not None:
        observation["bodySite"] = _body_site(measure.position)
    return observation


def _blood_pressure(group: _Group, pair: Mapping[int, _Measure]) -> Resource:
    """One 85354-9 panel from systolic 10 and diastolic 9 of one group (and one position)."""
    position = next(iter(pair.values())).position
    codings = [make_coding(LOINC, *BLOOD_PRESSURE_PANEL)]
    components = []
    for meastype in (SYSTOLIC, DIASTOLIC):
        row = MEASTYPE_BY_TYPE[meastype]
        code = {"coding": [*_loinc_codings(row), _meastype_coding(meastype, row)]}
        measure = pair.get(meastype)
        if measure is None:
            # The core bp profile requires both components; a missing one is "unknown" (vs-3).
            absent = {"coding": [make_coding(DATA_ABSENT_REASON, "unknown", "Unknown")]}
            components.append({"code": code, "dataAbsentReason": absent})
            continue
        # The panel also carries the Withings codings, so `code=<meastype system>|10` finds it.
        codings.append(_meastype_coding(meastype, row))
        quantity = ucum_quantity(_scaled(measure, row), row.ucum, row.unit)
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


def _measures(raw: object, out: Normalised) -> list[_Measure]:
    """Well-formed measures of a group; the same (type, position) twice keeps the first."""
    measures: dict[tuple[int, int | None], _Measure] = {}
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            out.skipped["malformed"] += 1
            continue
        meastype, value, unit = item.get("type"), item.get("value"), item.get("unit")
        position = item.get("position")
        if not (is_int(meastype) and is_int(value) and is_int(unit)) or not (
            position is None or is_int(position)
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
        if not (is_int(grpid) and is_epoch(taken)):
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
        device = device_resource(raw, patient)
        if device is not None:
            out.add_device(device)
        created = raw.get("created")
        group = _Group(
            grpid=grpid,
            patient=patient,
            effective=fhir_instant(taken),
            issued=fhir_instant(created) if is_epoch(created) else None,
            device=f"Device/{device['id']}" if device is not None else None,
            patient_reported=is_int(attrib) and attrib in _MANUAL_ATTRIBS,
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
