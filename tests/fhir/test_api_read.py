"""read / vread / history, conditional reads, deletions, and compartment isolation."""

from __future__ import annotations

import pytest

from tests.fhir.builders import observation
from tests.fhir.conftest import Api, entry_ids


async def test_read_returns_the_resource_with_version_headers(seeded: Api) -> None:
    response = await seeded.get("/Observation/alice-weight-01")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith("GMT")
    body = response.json()
    assert body["id"] == "alice-weight-01"
    assert body["valueQuantity"]["value"] == 70.0
    assert body["meta"]["versionId"] == "1"


async def test_conditional_read_answers_304(seeded: Api) -> None:
    first = await seeded.get("/Observation/alice-weight-01")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    same = await seeded.get("/Observation/alice-weight-01", headers={"If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    since = await seeded.get(
        "/Observation/alice-weight-01", headers={"If-Modified-Since": modified}
    )
    assert since.status_code == 304
    other = await seeded.get("/Observation/alice-weight-01", headers={"If-None-Match": 'W/"7"'})
    assert other.status_code == 200


async def test_changed_content_makes_a_new_version(seeded: Api) -> None:
    changed = observation(
        "alice-weight-01",
        "alice",
        loinc="29463-7",
        withings_type=1,
        effective="2024-05-01T07:30:00Z",
        value=69.9,
        device_id="scale-a",
    )
    await seeded.store.upsert([changed])
    current = await seeded.get("/Observation/alice-weight-01")
    assert current.headers["etag"] == 'W/"2"'
    assert current.json()["valueQuantity"]["value"] == 69.9
    stale = await seeded.get("/Observation/alice-weight-01", headers={"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200
    first = await seeded.get_json("/Observation/alice-weight-01/_history/1")
    assert first["valueQuantity"]["value"] == 70.0
    history = await seeded.get_json("/Observation/alice-weight-01/_history")
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


async def test_deleted_resources_answer_410_and_stay_in_history(seeded: Api) -> None:
    assert await seeded.store.delete("Observation", "alice-weight-02")
    response = await seeded.get("/Observation/alice-weight-02")
    assert response.status_code == 410
    assert response.json()["issue"][0]["code"] == "deleted"
    history = await seeded.get_json("/Observation/alice-weight-02/_history")
    assert history["entry"][0]["request"]["method"] == "DELETE"
    assert history["entry"][1]["resource"]["id"] == "alice-weight-02"
    search = await seeded.get_json("/Observation?patient=alice&code=29463-7&_count=100")
    assert "alice-weight-02" not in entry_ids(search)


async def test_unknown_ids_and_versions_are_404(seeded: Api) -> None:
    assert (await seeded.get("/Observation/nope")).status_code == 404
    assert (await seeded.get("/Observation/alice-weight-01/_history/9")).status_code == 404
    assert (await seeded.get("/Observation/alice-weight-01/_history/x")).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/Observation/bob-weight-01",
        "/Observation/bob-weight-01/_history",
        "/Observation/bob-weight-01/_history/1",
        "/Patient/bob",
        "/Device/cuff-b",
    ],
)
async def test_other_patients_resources_are_invisible(seeded: Api, path: str) -> None:
    hidden = await seeded.get(path, who="alice")
    assert hidden.status_code == 404
    assert (await seeded.get(path, who="bob")).status_code == 200


async def test_other_patients_deletions_are_invisible_too(seeded: Api) -> None:
    await seeded.store.delete("Observation", "bob-weight-03")
    assert (await seeded.get("/Observation/bob-weight-03", who="alice")).status_code == 404
    assert (await seeded.get("/Observation/bob-weight-03", who="bob")).status_code == 410


@pytest.mark.parametrize(
    "query",
    [
        "/Observation?_count=1000",
        "/Observation?patient=bob",
        "/Observation?subject=Patient/bob&code=29463-7",
        "/Observation?_id=bob-weight-01",
        "/Patient?_count=100",
        "/Device?_count=100",
        "/Observation/$lastn?patient=bob&category=vital-signs",
        "/Observation?patient=alice&_include=Observation:patient&_count=100",
    ],
)
async def test_patient_bound_tokens_only_see_their_compartment(seeded: Api, query: str) -> None:
    bundle = await seeded.get_json(query, who="alice")
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "OperationOutcome":
            continue
        assert "bob" not in resource["id"] and resource["id"] != "cuff-b", resource["id"]


async def test_patient_bound_token_sees_its_own_data(seeded: Api) -> None:
    bundle = await seeded.get_json("/Observation?_count=1000&_total=accurate", who="alice")
    assert bundle["total"] == 18


async def test_scopes_limit_resource_types(seeded: Api) -> None:
    assert (await seeded.get("/Device/scale-a", who="devices-only")).status_code == 200
    assert (await seeded.get("/Observation/alice-weight-01", who="devices-only")).status_code == 403
    assert (await seeded.get("/Observation?patient=alice", who="devices-only")).status_code == 403
