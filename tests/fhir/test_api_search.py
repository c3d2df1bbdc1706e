"""Observation search through the real app: parameters, result control, paging, outcomes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.fhir.builders import observation
from tests.fhir.conftest import BASE_URL, Api, entry_ids, link

WEIGHT = "http://loinc.org|29463-7"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # token forms
        ("code=29463-7&patient=alice", 10),
        (f"code={quote(WEIGHT)}&patient=alice", 10),
        ("code=%7C29463-7&patient=alice", 0),  # |code = no system; ours all have LOINC
        ("code=http%3A%2F%2Floinc.org%7C&patient=alice", 18),  # every code in the system
        ("code=http%3A%2F%2Floinc.org%7C8867-4,http%3A%2F%2Floinc.org%7C85354-9", 6),  # OR
        ("code:not=29463-7&patient=alice", 8),
        ("code:not=29463-7,8867-4&patient=alice", 5),
        ("category=vital-signs&patient=alice", 16),
        ("category=activity", 2),
        ("category:not=vital-signs&patient=alice", 2),
        # the Withings coding matches just as well as LOINC
        ("code=https%3A%2F%2Ffhir-gateway.dev%2Ffhir%2FCodeSystem%2Fwithings-meastype%7C11", 3),
        # references in every form
        ("patient=Patient/bob", 5),
        ("subject=bob", 5),
        ("subject:Patient=bob", 5),
        (f"patient={quote(BASE_URL + '/Patient/bob')}", 5),
        ("device=scale-a", 10),
        ("device=Device/cuff-b", 5),
        ("_id=alice-hr-02,alice-hr-05,nope", 2),
        # dates: AND of ge/lt, precision, prefixes against instants and periods
        ("patient=alice&code=29463-7&date=2024-05-03", 1),
        ("patient=alice&code=29463-7&date=ge2024-05-03&date=lt2024-05-06", 3),
        ("patient=alice&code=29463-7&date=2024-05", 10),
        ("patient=alice&code=29463-7&date=2024", 10),
        ("patient=alice&code=29463-7&date=2023", 0),
        ("patient=alice&code=29463-7&date=gt2024-05-09", 1),
        ("patient=alice&code=29463-7&date=le2024-05-02", 2),
        ("patient=alice&code=29463-7&date=ne2024-05-02", 9),
        ("patient=alice&code=29463-7&date=sa2024-05-08", 2),
        ("patient=alice&code=29463-7&date=eb2024-05-03", 2),
        ("patient=alice&code=29463-7&date=2024-05-03T07:30:00Z", 1),
        ("patient=alice&code=29463-7&date=2024-05-03T09:30:00%2B02:00", 1),
        ("patient=alice&code=29463-7&date=2024-05-03T07:30", 1),
        # heart rate at 08:00+02:00 = 06:00Z: the UTC day decides
        ("code=8867-4&date=2024-05-05T06:00:00Z", 1),
        # the closed sleep period 05-04 22:30 .. 05-05 06:10: not contained in either day
        ("code=93832-4&date=2024-05-04", 0),
        ("code=93832-4&date=ap2024-05-05", 2),
        ("code=93832-4&date=ge2024-05-05", 1),  # ge = gt or eq: the closed night is neither
        (
            "code=93832-4&date=le2024-05-04",
            0,
        ),  # le = lt or eq: the night starts on the 4th, ends on the 5th
        ("code=93832-4&date=sa2024-05-06", 1),  # only the open period starts later
        ("code=93832-4&date=gt2030-01-01", 1),  # an open end reaches into the future
        ("code=93832-4&date=eb2024-05-06", 1),
        # quantities
        ("value-quantity=70.5", 1),
        ("value-quantity=ge70.5&patient=alice", 8),  # 5 weights, 2 heart rates, 1 sleep
        ("value-quantity=gt90%7Chttp%3A%2F%2Funitsofmeasure.org%7Ckg", 5),
        ("value-quantity=lt65%7C%7C%2Fmin", 1),
        ("value-quantity=70", 5),  # 70 implies [69.5, 70.5): 70.0 .. 70.4
        # the composite: a systolic above 140 in one component
        ("component-code-value-quantity=http%3A%2F%2Floinc.org%7C8480-6%24gt140", 1),
        ("component-code-value-quantity=8480-6%24gt130,8462-4%24lt80", 3),
        ("component-code-value-quantity=8462-4%24gt130", 0),
        ("_lastUpdated=gt2000-01-01&patient=bob", 5),
        ("_lastUpdated=lt2000-01-01", 0),
    ],
)
async def test_observation_search(seeded: Api, query: str, expected: int) -> None:
    bundle = await seeded.get_json(f"/Observation?{query}&_count=100&_total=accurate")
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == expected
    assert len(entry_ids(bundle)) == expected


async def test_entries_carry_absolute_full_urls_and_search_mode(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?_id=alice-weight-01")
    (entry,) = bundle["entry"]
    assert entry["fullUrl"] == f"{BASE_URL}/Observation/alice-weight-01"
    assert entry["search"] == {"mode": "match"}
    assert entry["resource"]["meta"]["versionId"] == "1"


async def test_post_search_matches_get(seeded: Api) -> None:
    got = await seeded.get_json("/Observation?patient=alice&code=8867-4")
    response = await seeded.client.post(
        "/Observation/_search",
        content="patient=alice&code=8867-4",
        headers={**seeded.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    posted = response.json()
    assert entry_ids(posted) == entry_ids(got)
    assert link(posted, "self") == link(got, "self")


async def test_sort_by_date_both_ways(seeded: Api) -> None:
    ascending = await seeded.get_json("/Observation?patient=alice&code=29463-7&_sort=date")
    descending = await seeded.get_json("/Observation?patient=alice&code=29463-7&_sort=-date")
    assert entry_ids(ascending) == [f"alice-weight-{d:02d}" for d in range(1, 11)]
    assert entry_ids(descending) == list(reversed(entry_ids(ascending)))


async def _walk(api: Api, url: str, relation: str = "next") -> list[str]:
    seen: list[str] = []
    next_url: str | None = url
    while next_url:
        bundle = await api.get_json(next_url.removeprefix(BASE_URL))
        seen += entry_ids(bundle)
        next_url = link(bundle, relation)
    return seen


@pytest.mark.parametrize("sort", ["_id", "date", "-date", "_lastUpdated", "-_lastUpdated"])
async def test_paging_visits_every_row_once(seeded: Api, sort: str) -> None:
    everything = await seeded.get_json(f"/Observation?patient=alice&_count=1000&_sort={sort}")
    walked = await _walk(seeded, f"/Observation?patient=alice&_count=3&_sort={sort}")
    assert walked == entry_ids(everything)
    assert len(walked) == 18


async def test_previous_links_walk_back_exactly(seeded: Api) -> None:
    forward: list[list[str]] = []
    bundle = await seeded.get_json("/Observation?patient=alice&_count=4&_sort=date")
    forward.append(entry_ids(bundle))
    while (next_url := link(bundle, "next")) is not None:
        bundle = await seeded.get_json(next_url.removeprefix(BASE_URL))
        forward.append(entry_ids(bundle))
    backward: list[list[str]] = [entry_ids(bundle)]
    while (previous := link(bundle, "previous")) is not None:
        bundle = await seeded.get_json(previous.removeprefix(BASE_URL))
        backward.append(entry_ids(bundle))
    assert backward == list(reversed(forward))


async def test_paging_is_stable_while_new_data_arrives(seeded: Api) -> None:
    """Keyset cursors: rows inserted between pages never cause duplicates or skips."""
    original = entry_ids(await seeded.get_json("/Observation?patient=alice&_count=1000&_sort=date"))
    seen: list[str] = []
    bundle = await seeded.get_json("/Observation?patient=alice&_count=4&_sort=date")
    inserted = 0
    while True:
        seen += entry_ids(bundle)
        # New measurements land before, inside and after the range already paged through.
        for day in ("2024-04-01", "2024-05-05", "2024-06-01"):
            inserted += 1
            await seeded.store.upsert(
                [
                    observation(
                        f"late-{inserted}",
                        "alice",
                        loinc="29463-7",
                        withings_type=1,
                        effective=f"{day}T12:00:00Z",
                        value=71.0,
                    )
                ]
            )
        next_url = link(bundle, "next")
        if next_url is None:
            break
        bundle = await seeded.get_json(next_url.removeprefix(BASE_URL))
    originals_seen = [row for row in seen if not row.startswith("late-")]
    assert originals_seen == original
    assert len(seen) == len(set(seen))


async def test_self_link_states_only_the_parameters_used(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?patient=alice&frobnicate=1&code=8867-4")
    self_url = link(bundle, "self")
    assert self_url is not None
    assert "frobnicate" not in self_url
    assert "patient=alice" in self_url and "code=8867-4" in self_url
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1
    issue = outcome[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning"
    assert "frobnicate" in issue["diagnostics"]


async def test_strict_handling_rejects_unknown_parameters(seeded: Api) -> None:
    response = await seeded.get(
        "/Observation?patient=alice&frobnicate=1", headers={"Prefer": "handling=strict"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "frobnicate" in body["issue"][0]["diagnostics"]
    lenient = await seeded.get(
        "/Observation?patient=alice&frobnicate=1", headers={"Prefer": "handling=lenient"}
    )
    assert lenient.status_code == 200


@pytest.mark.parametrize("query", ["_summary=count", "_count=0"])
async def test_count_only(seeded: Api, query: str) -> None:
    bundle = await seeded.get_json(f"/Observation?patient=alice&code=29463-7&{query}")
    assert bundle["total"] == 10
    assert "entry" not in bundle
    assert [item["relation"] for item in bundle["link"]] == ["self"]


@pytest.mark.parametrize(
    ("mode", "has_total"), [("none", False), ("accurate", True), ("estimate", True)]
)
async def test_total_modes(seeded: Api, mode: str, has_total: bool) -> None:
    bundle = await seeded.get_json(f"/Observation?patient=alice&_count=2&_total={mode}")
    assert ("total" in bundle) is has_total
    if has_total:
        assert bundle["total"] == 18


async def test_count_is_clamped_with_a_warning(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?patient=bob&_count=5000")
    assert len(entry_ids(bundle)) == 5
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "1000" in outcome[0]["resource"]["issue"][0]["diagnostics"]


async def test_elements_subsets_and_tags(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?_id=alice-weight-01&_elements=valueQuantity")
    resource = bundle["entry"][0]["resource"]
    assert "valueQuantity" in resource
    assert "device" not in resource and "category" not in resource
    assert resource["id"] == "alice-weight-01"
    assert {"code": "SUBSETTED"}.items() <= resource["meta"]["tag"][0].items()


async def test_include_patient_and_device(seeded: Api) -> None:
    bundle = await seeded.get_json(
        "/Observation?patient=alice&code=29463-7&_include=Observation:patient"
        "&_include=Observation:device"
    )
    assert len(entry_ids(bundle)) == 10
    included = sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    )
    assert included == ["Device/scale-a", "Patient/alice"]


async def test_lastn_returns_the_newest_per_code(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation/$lastn?patient=alice&category=vital-signs&max=2")
    ids = entry_ids(bundle)
    assert sorted(ids) == sorted(
        [
            "alice-weight-10",
            "alice-weight-09",
            "alice-hr-09",
            "alice-hr-05",
            "alice-bp-08",
            "alice-bp-06",
        ]
    )


async def test_lastn_needs_a_patient(seeded: Api) -> None:
    response = await seeded.get("/Observation/$lastn?category=vital-signs")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_patient_and_device_search(seeded: Api) -> None:
    patients = await seeded.get_json("/Patient?_id=alice,bob")
    assert sorted(entry_ids(patients)) == ["alice", "bob"]
    devices = await seeded.get_json("/Device?patient=bob")
    assert entry_ids(devices) == ["cuff-b"]


async def test_empty_parameter_values_are_ignored(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?patient=bob&code=&_total=accurate")
    assert bundle["total"] == 5


def _all_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", [])]
