"""Normalisation of real Withings captures into FHIR R4 resources, validated as written."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_gateway.fhir.validation import validate_resource, validate_vital_signs
from fhir_gateway.withings import identity
from fhir_gateway.withings.mapping import (
    PRECISION_EXTENSION,
    Normalised,
    json_number,
    normalise_activity,
    normalise_measure_groups,
    normalise_sleep_summaries,
    patient_resource,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "withings"
LOINC = "http://loinc.org"
MEASTYPE = identity.WITHINGS_MEASTYPE_SYSTEM
PATIENT = "withings-363"
GROUP_FILES = [
    "aiowithings/measurement_list.json",
    "aiowithings/measurement_list_2.json",
    "aiowithings/measurement_positions.json",
    "aiowithings/measurement.json",
]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def real_groups(name: str) -> list[dict[str, Any]]:
    data = load(name)
    groups: list[dict[str, Any]] = data["body"]["measuregrps"] if isinstance(data, dict) else data
    return groups


def normalise(groups: list[dict[str, Any]]) -> Normalised:
    return normalise_measure_groups(
        groups, userid="363", patient_id=PATIENT, timezone="Europe/Amsterdam"
    )


def group(*measures: Any, **fields: Any) -> dict[str, Any]:
    """A measure group shaped like the real ones (BPM Connect by default)."""
    return {
        "grpid": 1001,
        "attrib": 0,
        "date": 1693651151,
        "created": 1693651185,
        "modified": 1693651185,
        "category": 1,
        "deviceid": "91a7e556c2022ef54dca6e07a853c3193734d148",
        "measures": list(measures),
        "modelid": 45,
        "model": "BPM Connect",
        **fields,
    }


def measure(type_: int, value: int, unit: int = 0, **fields: int) -> dict[str, int]:
    return {"type": type_, "value": value, "unit": unit, **fields}


def codes(resource: dict[str, Any], system: str) -> list[str]:
    return [c["code"] for c in resource["code"]["coding"] if c["system"] == system]


def by_id(normalised: Normalised) -> dict[str, dict[str, Any]]:
    return {resource["id"]: resource for resource in normalised.resources}


def validate_all(normalised: Normalised) -> None:
    for resource in [*normalised.resources, *normalised.devices]:
        validate_resource(resource)
        assert identity.is_fhir_id(resource["id"])
        if "vital-signs" in json.dumps(resource.get("category")):
            validate_vital_signs(resource)


# ---------------------------------------------------------------- real measure groups


@pytest.mark.parametrize("name", GROUP_FILES)
def test_every_real_group_normalises_and_every_resource_validates(name: str) -> None:
    normalised = normalise(real_groups(name))
    assert normalised.resources
    assert normalised.unknown_types == set()
    validate_all(normalised)
    ids = [resource["id"] for resource in normalised.resources]
    assert len(ids) == len(set(ids))


def kept_measures(groups: list[dict[str, Any]]) -> set[tuple[int, int, int | None]]:
    """(grpid, type, position) that should be published, computed from the raw fixture."""
    return {
        (g["grpid"], m["type"], m.get("position"))
        for g in groups
        if g["category"] == 1 and g["attrib"] != 1
        for m in g["measures"]
    }


@pytest.mark.parametrize("name", GROUP_FILES[:3])
def test_counts_per_code_match_the_raw_fixture(name: str) -> None:
    groups = real_groups(name)
    normalised = normalise(groups)
    kept = kept_measures(groups)
    bp_groups = {grpid for grpid, type_, _ in kept if type_ in (9, 10)}
    panels = [r for r in normalised.resources if codes(r, LOINC)[:1] == ["85354-9"]]
    assert len(panels) == len(bp_groups)

    expected_per_type = Counter(type_ for _, type_, _ in kept if type_ not in (9, 10))
    emitted_per_type = Counter(
        int(code)
        for r in normalised.resources
        if "component" not in r
        for code in codes(r, MEASTYPE)
    )
    assert emitted_per_type == expected_per_type

    loinc_of = {1: "29463-7", 4: "8302-2", 5: "91557-9", 6: "41982-0", 8: "73708-0",
                11: "8867-4", 76: "73964-9"}  # fmt: skip
    emitted_loinc = Counter(code for r in normalised.resources for code in codes(r, LOINC))
    for type_, loinc in loinc_of.items():
        assert emitted_loinc[loinc] == expected_per_type[type_]
    assert len(normalised.resources) == len(bp_groups) + sum(expected_per_type.values())


def test_skip_counts_of_the_real_lists() -> None:
    first = real_groups("aiowithings/measurement_list.json")
    assert normalise(first).skipped == Counter(ambiguous=sum(1 for g in first if g["attrib"] == 1))
    second = real_groups("aiowithings/measurement_list_2.json")
    repeated = sum(
        len(g["measures"]) - len({(m["type"], m.get("position")) for m in g["measures"]})
        for g in second
    )
    assert repeated == 28  # Body Scan sends 5 and 8 twice at position 7
    assert normalise(second).skipped == Counter(duplicate=repeated)


def test_same_group_twice_in_one_batch_is_published_once() -> None:
    groups = real_groups("aiowithings/measurement.json")
    assert groups[0]["grpid"] == groups[1]["grpid"]
    normalised = normalise(groups)
    assert [r["id"] for r in normalised.resources] == ["wm-4815757309-1"]
    assert normalised.skipped == Counter(duplicate=1)
    assert normalised.resources[0]["valueQuantity"]["value"] == 118.003


def component(panel: dict[str, Any], loinc: str) -> dict[str, Any]:
    (match,) = [c for c in panel["component"] if loinc in json.dumps(c["code"])]
    return dict(match)


def test_blood_pressure_panels_pair_the_values_of_their_own_group() -> None:
    groups = real_groups("aiowithings/measurement_list.json")
    resources = by_id(normalise(groups))
    panel = resources["wm-2726388728-bp"]  # BPM Connect, attrib 17: 143/106, pulse 82
    assert component(panel, "8480-6")["valueQuantity"]["value"] == 143.0
    assert component(panel, "8462-4")["valueQuantity"]["value"] == 106.0
    assert resources["wm-2726388728-11"]["valueQuantity"]["value"] == 82.0
    manual = resources["wm-2728397845-bp"]  # manual entry, unit 0: 145/109, pulse 83
    assert component(manual, "8480-6")["valueQuantity"]["value"] == 145
    assert component(manual, "8462-4")["valueQuantity"]["value"] == 109
    assert resources["wm-2728397845-11"]["valueQuantity"]["value"] == 83

    for raw in groups:
        values = {m["type"]: Decimal(m["value"]).scaleb(m["unit"]) for m in raw["measures"]}
        if 10 not in values or raw["attrib"] == 1:
            continue
        panel = resources[f"wm-{raw['grpid']}-bp"]
        assert component(panel, "8480-6")["valueQuantity"]["value"] == values[10]
        assert component(panel, "8462-4")["valueQuantity"]["value"] == values[9]
        assert resources[f"wm-{raw['grpid']}-11"]["valueQuantity"]["value"] == values[11]


def test_heart_pulse_is_never_diastolic_and_temperature_never_heart_rate() -> None:
    resources = normalise(
        [group(measure(9, 80), measure(10, 120), measure(11, 65), measure(12, 3710, -2))]
    ).resources
    for _ in range(2):
        resources += normalise(real_groups("aiowithings/measurement_list.json")).resources
    for resource in resources:
        withings = codes(resource, MEASTYPE)
        loinc = codes(resource, LOINC)
        if "11" in withings:
            assert loinc == ["8867-4"] and resource["valueQuantity"]["code"] == "/min"
        if "8867-4" in loinc:
            assert withings == ["11"]
        if "12" in withings:
            assert loinc == ["8310-5"]
        for part in resource.get("component", []):
            pair = [(c["system"], c["code"]) for c in part["code"]["coding"]]
            assert pair in ([(LOINC, "8480-6"), (MEASTYPE, "10")],
                            [(LOINC, "8462-4"), (MEASTYPE, "9")])  # fmt: skip
    synthetic = by_id(normalise([group(measure(9, 80), measure(10, 120), measure(11, 65))]))
    assert component(synthetic["wm-1001-bp"], "8462-4")["valueQuantity"]["value"] == 80
    assert synthetic["wm-1001-11"]["valueQuantity"]["value"] == 65


def test_a_lone_systolic_still_makes_a_valid_panel() -> None:
    normalised = normalise([group(measure(10, 131))])
    (panel,) = normalised.resources
    validate_all(normalised)
    assert component(panel, "8480-6")["valueQuantity"]["value"] == 131
    diastolic = component(panel, "8462-4")
    assert "valueQuantity" not in diastolic
    assert diastolic["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert codes(panel, MEASTYPE) == ["10"]


# ---------------------------------------------------------------- values and precision


@pytest.mark.parametrize(
    ("value", "unit", "number", "precision"),
    [
        (118003, -3, 118.003, None),
        (7520, -2, 75.2, 2),  # 75.20: the trailing zero is recorded, not lost
        (7500, -2, 75.0, 2),
        (500000, -4, 50.0, 4),  # real manual weight
        (95908, -3, 95.908, None),
        (120, 0, 120, None),
        (5, 2, 500, None),
        (-1000, -3, -1.0, 3),  # type 18 in a 2015 capture
        (123456789, -8, 1.23456789, None),
        (1, -5, 1e-05, None),
    ],
)
def test_value_times_ten_to_the_unit_keeps_its_digits(
    value: int, unit: int, number: float, precision: int | None
) -> None:
    (observation,) = normalise([group(measure(1, value, unit))]).resources
    quantity = observation["valueQuantity"]
    assert quantity["value"] == number and type(quantity["value"]) is type(number)
    recorded = quantity.get("_value", {}).get("extension", [{}])[0]
    assert recorded.get("valueInteger") == precision
    if precision is not None:
        assert recorded["url"] == PRECISION_EXTENSION
    stored = re.search(rb'"valueQuantity":\{"value":([^,}]+)', orjson.dumps(observation))
    assert stored is not None and Decimal(stored[1].decode()) == Decimal(value).scaleb(unit)


@given(st.integers(-(10**10), 10**10), st.integers(-9, 3))
def test_json_number_is_exact_and_never_loses_precision(value: int, unit: int) -> None:
    exact = Decimal(value).scaleb(unit)
    number, precision = json_number(exact)
    assert Decimal(repr(number)) == exact
    shown = max(0, -Decimal(repr(number)).as_tuple().exponent)  # type: ignore[operator]
    assert (precision if precision is not None else shown) == max(0, -unit)
    assert isinstance(number, int) == (unit >= 0)


def test_height_is_emitted_in_centimetres_for_the_bodyheight_profile() -> None:
    resources = by_id(normalise(real_groups("aiowithings/measurement_list.json")))
    height = resources["wm-2726375354-4"]  # manual entry: 1600, -3 → 1.600 m
    assert height["valueQuantity"] == {
        "value": 160.0,
        "unit": "cm",
        "system": "http://unitsofmeasure.org",
        "code": "cm",
    }
    assert height["meta"]["profile"][1].endswith("/bodyheight")


@pytest.mark.parametrize(
    ("type_", "value", "unit", "expected"),
    [(54, 95, -2, 95), (54, 97, 0, 97), (135, 96, 0, 96), (135, 96, -3, 96), (138, 412, 0, 412)],
)
def test_fraction_and_second_readings_are_brought_to_the_profile_unit(
    type_: int, value: int, unit: int, expected: int
) -> None:
    normalised = normalise([group(measure(type_, value, unit))])
    validate_all(normalised)
    assert normalised.resources[0]["valueQuantity"]["value"] == expected


def test_spo2_carries_both_pulse_oximetry_codes() -> None:
    (spo2,) = normalise([group(measure(54, 97))]).resources
    assert codes(spo2, LOINC) == ["59408-5", "2708-6"]
    assert spo2["meta"]["profile"][1].endswith("/oxygensat")


@pytest.mark.parametrize("type_", [12, 71])
def test_temperatures_are_body_temperature_vital_signs(type_: int) -> None:
    normalised = normalise([group(measure(type_, 3690, -2))])
    validate_all(normalised)
    (temperature,) = normalised.resources
    assert codes(temperature, LOINC) == ["8310-5"]
    assert temperature["valueQuantity"]["code"] == "Cel"


# ---------------------------------------------------------------- attrib, category, positions


def test_ambiguous_and_goal_groups_are_counted_not_published() -> None:
    normalised = normalise(
        [
            group(measure(1, 80000, -3), attrib=1, grpid=1),
            group(measure(1, 70000, -3), category=2, grpid=2),
            group(measure(1, 70000, -3), category=3, grpid=3),
            group(measure(1, 81000, -3), grpid=4),
        ]
    )
    assert [r["id"] for r in normalised.resources] == ["wm-4-1"]
    assert normalised.skipped == Counter(ambiguous=1, goal=1, **{"unknown-category": 1})


@pytest.mark.parametrize("attrib", [2, 4])
def test_manual_entries_are_patient_reported_without_device(attrib: int) -> None:
    manual = group(measure(1, 6700, -2), attrib=attrib, deviceid=None, model=None, modelid=None)
    normalised = normalise([manual])
    (weight,) = normalised.resources
    assert weight["performer"] == [{"reference": f"Patient/{PATIENT}"}]
    assert weight["meta"]["tag"][0]["code"] == "patient-supplied"
    assert "device" not in weight and normalised.devices == []
    validate_all(normalised)


@pytest.mark.parametrize("attrib", [0, 5, 8, 17, 10, 10000, None])
def test_other_attribs_are_device_data(attrib: int | None) -> None:
    normalised = normalise([group(measure(1, 80000, -3), attrib=attrib)])
    (weight,) = normalised.resources
    assert "performer" not in weight and "tag" not in weight.get("meta", {})
    assert weight["device"] == {"reference": f"Device/{normalised.devices[0]['id']}"}


def test_devices_are_built_once_from_the_groups() -> None:
    normalised = normalise(real_groups("aiowithings/measurement_list.json"))
    assert sorted((d["deviceName"][0]["name"], d["modelNumber"]) for d in normalised.devices) == [
        ("BPM Connect", "45"),
        ("Body Cardio", "6"),
    ]
    device = normalised.devices[0]
    assert device["id"] == f"withings-{device['identifier'][0]['value']}"
    assert device["identifier"][0]["system"] == identity.DEVICE_IDENTIFIER_SYSTEM
    assert device["manufacturer"] == "Withings"
    assert device["patient"] == {"reference": f"Patient/{PATIENT}"}
    manual = [r for r in normalised.resources if "performer" in r]
    assert manual and all("device" not in r for r in manual)


def test_positions_make_distinct_observations_with_a_body_site() -> None:
    resources = by_id(normalise(real_groups("aiowithings/measurement_list_2.json")))
    segments = {p: resources[f"wm-5114418400-173-p{p}"] for p in (2, 3, 10, 11, 12)}
    assert {p: s["valueQuantity"]["value"] for p, s in segments.items()} == {
        2: 5.36, 3: 5.05, 10: 13.04, 11: 13.53, 12: 39.81,
    }  # fmt: skip
    assert segments[12]["bodySite"]["text"] == "torso"
    assert segments[2]["bodySite"]["coding"][0] == {
        "system": identity.WITHINGS_POSITION_SYSTEM,
        "code": "2",
        "display": "right arm",
    }
    assert segments[2]["identifier"][0]["value"] == "5114418400-173-2"
    assert resources["wm-5114418400-1"].get("bodySite") is None


def test_afib_results_are_coded_values() -> None:
    resources = by_id(normalise(real_groups("aiowithings/measurement_list_2.json")))
    afib = resources["wm-5122267193-130"]
    assert afib["valueCodeableConcept"]["coding"] == [
        {"system": identity.WITHINGS_AFIB_SYSTEM, "code": "8", "display": "Inconclusive US"}
    ]
    assert "valueQuantity" not in afib
    ppg = normalise([group(measure(139, 1), measure(130, 20), grpid=7)])
    validate_all(ppg)
    coded = {r["id"]: r["valueCodeableConcept"]["text"] for r in ppg.resources}
    assert coded == {"wm-7-139": "Positive", "wm-7-130": "Withings AFib result 20"}


def test_unknown_meastype_is_kept_with_the_withings_code_only() -> None:
    normalised = normalise([group(measure(9999, 15, -1), measure(1, 80000, -3))])
    unknown = by_id(normalised)["wm-1001-9999"]
    assert unknown["code"]["coding"] == [
        {"system": MEASTYPE, "code": "9999", "display": "Withings meastype 9999"}
    ]
    assert unknown["valueQuantity"] == {"value": 1.5}
    assert "category" not in unknown
    assert normalised.unknown_types == {9999}
    validate_all(normalised)


def test_malformed_measures_are_counted_and_the_rest_published() -> None:
    normalised = normalise(
        [
            group(measure(1, 80000, -3), {"type": 6, "value": "12"}, "junk", measure(6, 1, 99)),
            {"grpid": "x", "date": 1},
        ]
    )
    assert [r["id"] for r in normalised.resources] == ["wm-1001-1"]
    assert normalised.skipped == Counter(malformed=4)


json_values = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats()
    | st.text(max_size=3)
    | st.lists(st.integers(0, 2), max_size=2)
)
measures = st.lists(
    st.fixed_dictionaries(
        {"type": st.integers(-5, 300), "value": st.integers(), "unit": st.integers(-30, 30)},
        optional={"position": st.integers(-1, 40) | json_values},
    )
    | json_values,
    max_size=5,
)


@given(
    st.lists(
        st.fixed_dictionaries(
            {"grpid": st.integers(0, 10**12), "date": st.integers(-(2**40), 2**40)},
            optional={
                "attrib": json_values,
                "created": json_values | st.integers(),
                "category": st.sampled_from([1, 2, 3]),
                "deviceid": st.none() | st.text(max_size=80),
                "measures": measures,
            },
        ),
        max_size=4,
    )
)
def test_any_group_shape_never_crashes(groups: list[dict[str, Any]]) -> None:
    normalised = normalise(groups)
    assert all(identity.is_fhir_id(r["id"]) for r in [*normalised.resources, *normalised.devices])


def test_same_input_gives_identical_output() -> None:
    groups = real_groups("aiowithings/measurement_list_2.json")
    first, second = normalise(groups), normalise(json.loads(json.dumps(groups)))
    assert first == second
    assert orjson.dumps(first.resources) == orjson.dumps(second.resources)


# ---------------------------------------------------------------- daily activity


def activity_row(**fields: Any) -> dict[str, Any]:
    row = dict(load("aiowithings/activity.json")["body"]["activities"][0])
    row.update(fields)
    return row


def test_real_activity_rows_become_daily_observations() -> None:
    rows = load("aiowithings/activity.json")["body"]["activities"]
    normalised = normalise_activity(rows, userid="363", patient_id=PATIENT)
    validate_all(normalised)
    resources = by_id(normalised)
    steps = resources["wa-363-20231020-steps"]
    assert codes(steps, LOINC) == ["41950-7"]
    assert steps["valueQuantity"]["value"] == 1209
    assert steps["valueQuantity"]["code"] == "{steps}"
    assert steps["effectivePeriod"] == {
        "start": "2023-10-20T00:00:00+02:00",
        "end": "2023-10-21T00:00:00+02:00",
    }
    assert steps["category"][0]["coding"][0]["code"] == "activity"
    assert resources["wa-363-20231020-calories"]["valueQuantity"]["value"] == 85.497
    assert codes(resources["wa-363-20231020-calories"], LOINC) == ["41981-2"]
    total = resources["wa-363-20231020-totalcalories"]
    assert codes(total, LOINC) == [] and total["valueQuantity"]["value"] == 2303.788
    assert resources["wa-363-20231020-distance"]["valueQuantity"]["value"] == 1028.559
    assert "device" not in steps  # GoogleFit rows have no deviceid


def test_ha_activity_rows_publish_every_present_metric() -> None:
    rows = load("ha-core/activity.json")
    normalised = normalise_activity(rows, userid="363", patient_id=PATIENT)
    validate_all(normalised)
    metrics = (
        "steps distance elevation soft moderate intense active calories totalcalories "
        "hr_average hr_min hr_max hr_zone_0 hr_zone_1 hr_zone_2 hr_zone_3"
    ).split()
    present = sum(1 for row in rows for m in metrics if isinstance(row.get(m), int | float))
    assert len(normalised.resources) == present == 14 * 9


@pytest.mark.parametrize(
    ("day", "zone", "start", "end"),
    [
        (
            "2023-10-29",
            "Europe/Amsterdam",
            "2023-10-29T00:00:00+02:00",
            "2023-10-30T00:00:00+01:00",
        ),
        (
            "2026-03-29",
            "Europe/Amsterdam",
            "2026-03-29T00:00:00+01:00",
            "2026-03-30T00:00:00+02:00",
        ),
        (
            "2026-01-05",
            "America/New_York",
            "2026-01-05T00:00:00-05:00",
            "2026-01-06T00:00:00-05:00",
        ),
        ("2026-01-05", "Asia/Kolkata", "2026-01-05T00:00:00+05:30", "2026-01-06T00:00:00+05:30"),
        ("2026-01-05", "Not/AZone", "2026-01-05", "2026-01-05"),
        ("2026-01-05", None, "2026-01-05", "2026-01-05"),
    ],
)
def test_activity_day_is_the_local_day_of_the_row_timezone(
    day: str, zone: str | None, start: str, end: str
) -> None:
    normalised = normalise_activity(
        [activity_row(date=day, timezone=zone)], userid="363", patient_id=PATIENT
    )
    validate_all(normalised)
    periods = {json.dumps(r["effectivePeriod"]) for r in normalised.resources}
    assert periods == {json.dumps({"start": start, "end": end})}


def test_refetched_day_keeps_ids_and_changes_values() -> None:
    morning = normalise_activity(
        [activity_row(steps=1209, modified=1697884856)], userid="363", patient_id=PATIENT
    )
    evening = normalise_activity(
        [activity_row(steps=8800, modified=1697900000)], userid="363", patient_id=PATIENT
    )
    assert [r["id"] for r in morning.resources] == [r["id"] for r in evening.resources]
    assert by_id(evening)["wa-363-20231020-steps"]["valueQuantity"]["value"] == 8800


def test_activity_device_and_malformed_rows() -> None:
    tracked = activity_row(deviceid="ab" * 20, brand=1, model="ScanWatch", modelid=93)
    normalised = normalise_activity(
        [tracked, {"date": "yesterday"}, {}], userid="363", patient_id=PATIENT
    )
    assert normalised.skipped == Counter(malformed=2)
    assert normalised.devices[0]["deviceName"] == [{"name": "ScanWatch", "type": "model-name"}]
    assert all(
        r["device"]["reference"] == f"Device/withings-{'ab' * 20}" for r in normalised.resources
    )


# ---------------------------------------------------------------- sleep summaries


def test_real_sleep_summaries_of_300_nights() -> None:
    rows = load("aiowithings/sleep_summary.json")["body"]["series"]
    assert len(rows) == 300
    normalised = normalise_sleep_summaries(rows, userid="363", patient_id=PATIENT)
    validate_all(normalised)
    per_loinc = Counter(code for r in normalised.resources for code in codes(r, LOINC))
    assert per_loinc == {"93832-4": 300, "93831-6": 300, "93830-8": 300, "93829-0": 300}
    local = Counter(
        c["code"] for r in normalised.resources for c in r["code"]["coding"]
        if c["system"] == identity.WITHINGS_SLEEP_SYSTEM
    )  # fmt: skip
    measured_ahi = sum(1 for row in rows if row["data"]["apnea_hypopnea_index"] != -1)
    assert local["apnea_hypopnea_index"] == measured_ahi == 264
    assert local["durationtosleep"] == 0  # deprecated duplicate of sleep_latency

    first = rows[0]
    resources = by_id(normalised)
    total = resources[f"ws-363-{first['id']}-total-sleep-time"]
    assert total["valueQuantity"] == {
        "value": first["data"]["total_sleep_time"],
        "unit": "s",
        "system": "http://unitsofmeasure.org",
        "code": "s",
    }
    assert total["effectivePeriod"] == {
        "start": "2021-04-17T20:30:53Z",
        "end": "2021-04-18T02:32:53Z",
    }
    efficiency = resources[f"ws-363-{first['id']}-sleep-efficiency"]["valueQuantity"]
    assert (efficiency["value"], efficiency["code"]) == (86, "%")
    assert total["identifier"] == [
        {"system": identity.SLEEP_IDENTIFIER_SYSTEM, "value": f"{first['id']}-total_sleep_time"}
    ]


def test_ha_sleep_summaries_skip_minus_one() -> None:
    rows = load("ha-core/sleep_summaries.json")
    normalised = normalise_sleep_summaries(rows, userid="363", patient_id=PATIENT)
    validate_all(normalised)
    missing = [r for r in rows if r["data"]["breathing_disturbances_intensity"] == -1]
    assert len(missing) == 2
    for row in missing:
        assert f"ws-363-{row['id']}-breathing-disturbances-intensity" not in by_id(normalised)


# ---------------------------------------------------------------- patient and ids


def test_patient_resource_has_only_what_we_know() -> None:
    patient = patient_resource("363")
    validate_resource(patient)
    assert patient == {
        "resourceType": "Patient",
        "id": "withings-363",
        "identifier": [{"system": identity.USER_IDENTIFIER_SYSTEM, "value": "363"}],
    }


def test_ids_are_deterministic_and_valid() -> None:
    assert identity.measure_observation_id(4815757309, 1, None) == "wm-4815757309-1"
    assert identity.measure_observation_id(5114418400, 173, 12) == "wm-5114418400-173-p12"
    assert identity.blood_pressure_observation_id(1, None) == "wm-1-bp"
    assert identity.activity_observation_id("363", "2026-01-05", "hr_zone_0") == (
        "wa-363-20260105-hr-zone-0"
    )
    assert identity.sleep_observation_id("363", 2081804182, "total_sleep_time") == (
        "ws-363-2081804182-total-sleep-time"
    )
    long_device = "f" * 80
    hashed = identity.device_id(long_device)
    assert identity.is_fhir_id(hashed) and hashed == identity.device_id(long_device)
    assert hashed != identity.device_id("f" * 81)
    assert identity.device_id("a" * 40) == "withings-" + "a" * 40
