"""Withings daily activity rows and nightly sleep summaries → FHIR R4 Observations. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fhir_gateway.withings import identity
from fhir_gateway.withings.fhir_values import (
    LOINC,
    Normalised,
    Resource,
    category_list,
    device_resource,
    exact_decimal,
    fhir_instant,
    is_epoch,
    is_int,
    make_coding,
    ucum_quantity,
)
from fhir_gateway.withings.meastypes import ACTIVITY_FIELDS, SLEEP_FIELDS, SummaryField


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
    amount = exact_decimal(row.get(name))
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
        local = make_coding(code_system, metric.field, metric.display)
        codings = [make_coding(LOINC, *metric.loinc), local] if metric.loinc else [local]
        observation: Resource = {
            "resourceType": "Observation",
            "id": id_,
            "identifier": [identifier],
            "status": "final",
            "category": category_list("activity"),
            "code": {"coding": codings, "text": metric.display},
            "subject": {"reference": context.patient},
            "effectivePeriod": dict(context.period),
        }
        if context.issued is not None:
            observation["issued"] = context.issued
        if context.device is not None:
            observation["device"] = {"reference": context.device}
        scaled = amount.scaleb(metric.scale)
        observation["valueQuantity"] = ucum_quantity(scaled, metric.ucum, metric.unit)
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
        device = device_resource(row, patient)
        if device is not None:
            out.add_device(device)
        modified = row.get("modified")
        context = _Context(
            patient=patient,
            period=_local_day(date.fromisoformat(day), row.get("timezone")),
            issued=fhir_instant(modified) if is_epoch(modified) else None,
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
        if not (is_int(sleepid) and is_epoch(start) and is_epoch(end) and isinstance(data, dict)):
            out.skipped["malformed"] += 1
            continue
        updated = row.get("modified", row.get("created"))
        context = _Context(
            patient=patient,
            period={"start": fhir_instant(start), "end": fhir_instant(end)},
            issued=fhir_instant(updated) if is_epoch(updated) else None,
            device=None,
        )

        def names(name: str, sleepid: int = sleepid) -> tuple[str, Resource]:
            key = identity.sleep_key(sleepid, name)
            identifier = {"system": identity.SLEEP_IDENTIFIER_SYSTEM, "value": key}
            return identity.sleep_observation_id(userid, sleepid, name), identifier

        _add_metrics(out, data, SLEEP_FIELDS, context, names, identity.WITHINGS_SLEEP_SYSTEM)
    return out
