"""Canonical URLs and deterministic FHIR ids for Withings data. Pure.

The URLs are fixed names, not addresses of this deployment: they must not change with
BASE_URL, or every stored coding and identifier would change meaning when a host moves.
Ids are deterministic so that re-fetching the same Withings data rewrites (versions) the same
resources instead of creating duplicates.
"""

from __future__ import annotations

import hashlib
import re

_CANONICAL = "https://fhir-gateway.dev/fhir"

WITHINGS_MEASTYPE_SYSTEM = f"{_CANONICAL}/CodeSystem/withings-meastype"
WITHINGS_AFIB_SYSTEM = f"{_CANONICAL}/CodeSystem/withings-afib"
WITHINGS_POSITION_SYSTEM = f"{_CANONICAL}/CodeSystem/withings-position"
WITHINGS_ACTIVITY_SYSTEM = f"{_CANONICAL}/CodeSystem/withings-activity"
WITHINGS_SLEEP_SYSTEM = f"{_CANONICAL}/CodeSystem/withings-sleep"

USER_IDENTIFIER_SYSTEM = f"{_CANONICAL}/sid/withings-user"
MEASURE_IDENTIFIER_SYSTEM = f"{_CANONICAL}/sid/withings-measure"
DEVICE_IDENTIFIER_SYSTEM = f"{_CANONICAL}/sid/withings-device"
ACTIVITY_IDENTIFIER_SYSTEM = f"{_CANONICAL}/sid/withings-activity"
SLEEP_IDENTIFIER_SYSTEM = f"{_CANONICAL}/sid/withings-sleep"

# FHIR R4 §2.24.0.1 datatype `id`.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(text: str) -> bool:
    """True when `text` is a valid FHIR id: 1-64 of [A-Za-z0-9-.]."""
    return _FHIR_ID.fullmatch(text) is not None


def _fhir_id(prefix: str, key: str) -> str:
    """`prefix-key` when that is a valid id, else `prefix-h<sha1 of key>` (still deterministic)."""
    candidate = f"{prefix}-{key}"
    if is_fhir_id(candidate):
        return candidate
    return f"{prefix}-h{hashlib.sha1(key.encode()).hexdigest()}"


def patient_id(userid: str) -> str:
    """'363' → 'withings-363'."""
    return _fhir_id("withings", userid)


def device_id(deviceid: str) -> str:
    """A 40-hex Withings deviceid → 'withings-<deviceid>'; longer or odd ones are hashed."""
    return _fhir_id("withings", deviceid)


def measure_key(grpid: int, meastype: int, position: int | None) -> str:
    """The withings-measure identifier value: '4815757309-1', or '5114418400-173-12'."""
    return f"{grpid}-{meastype}" if position is None else f"{grpid}-{meastype}-{position}"


def measure_observation_id(grpid: int, meastype: int, position: int | None) -> str:
    """'wm-4815757309-1', or 'wm-5114418400-173-p12' when the measure has a position."""
    key = f"{grpid}-{meastype}" if position is None else f"{grpid}-{meastype}-p{position}"
    return _fhir_id("wm", key)


def blood_pressure_key(grpid: int, position: int | None) -> str:
    """The withings-measure identifier value of a BP panel: '4815757309-bp'."""
    return f"{grpid}-bp" if position is None else f"{grpid}-bp-{position}"


def blood_pressure_observation_id(grpid: int, position: int | None) -> str:
    """'wm-4815757309-bp' (one panel per measure group, per position if it has one)."""
    key = f"{grpid}-bp" if position is None else f"{grpid}-bp-p{position}"
    return _fhir_id("wm", key)


def metric_slug(field: str) -> str:
    """A Withings field name as an id part: 'total_sleep_time' → 'total-sleep-time'."""
    return field.replace("_", "-")


def activity_observation_id(userid: str, day: str, field: str) -> str:
    """('363', '2026-01-05', 'steps') → 'wa-363-20260105-steps'."""
    return _fhir_id("wa", f"{userid}-{day.replace('-', '')}-{metric_slug(field)}")


def activity_key(userid: str, day: str, field: str) -> str:
    """The withings-activity identifier value: '363-2026-01-05-steps'."""
    return f"{userid}-{day}-{field}"


def sleep_observation_id(userid: str, sleepid: int, field: str) -> str:
    """('363', 2081804182, 'total_sleep_time') → 'ws-363-2081804182-total-sleep-time'."""
    return _fhir_id("ws", f"{userid}-{sleepid}-{metric_slug(field)}")


def sleep_key(sleepid: int, field: str) -> str:
    """The withings-sleep identifier value: '2081804182-total_sleep_time'."""
    return f"{sleepid}-{field}"
