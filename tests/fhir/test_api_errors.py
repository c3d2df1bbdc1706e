"""Every error is an OperationOutcome with the right status; nothing internal leaks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_gateway.fhir.validation import validate_resource
from tests.fhir.conftest import BASE_URL, Api


def assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    validate_resource(body)
    assert "Traceback" not in response.text
    return body


async def test_missing_token_is_401_with_challenge(seeded: Api) -> None:
    response = await seeded.client.get("/Observation")
    assert_outcome(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization", ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer", "bearer  ", "fgw_x"]
)
async def test_bad_tokens_are_401(seeded: Api, authorization: str) -> None:
    response = await seeded.client.get("/Observation", headers={"Authorization": authorization})
    assert_outcome(response, 401)


async def test_metadata_needs_no_token(seeded: Api) -> None:
    response = await seeded.client.get("/metadata")
    assert response.status_code == 200


async def test_scope_without_read_is_403(seeded: Api) -> None:
    assert_outcome(await seeded.get("/Observation", who="devices-only"), 403)


@pytest.mark.parametrize(
    "query",
    [
        "date=2024-13-01",
        "date=yesterday",
        "date=xx2024",
        "_count=-1",
        "_count=ten",
        "_sort=weight",
        "value-quantity=heavy",
        "component-code-value-quantity=8480-6",
        "_total=some",
        "_page=garbage",
        "_include=Observation:performer",
    ],
)
async def test_bad_search_syntax_is_400(seeded: Api, query: str) -> None:
    response = await seeded.get(f"/Observation?{query}", headers={"Prefer": "handling=strict"})
    body = assert_outcome(response, 400)
    assert body["issue"][0]["severity"] == "error"


async def test_unknown_path_and_type_are_404(seeded: Api) -> None:
    assert_outcome(await seeded.get("/Medication"), 404)
    assert_outcome(await seeded.get("/no/such/thing/here/at/all"), 404)
    assert_outcome(await seeded.get("/Observation/nope"), 404)


async def test_wrong_method_is_405(seeded: Api) -> None:
    response = await seeded.client.delete("/Observation/alice-weight-01", headers=seeded.auth())
    assert_outcome(response, 405)
    response = await seeded.client.put("/metadata", headers=seeded.auth())
    assert_outcome(response, 405)


@pytest.mark.parametrize("accept", ["application/fhir+xml", "text/html", "image/png"])
async def test_unsupported_accept_is_406(seeded: Api, accept: str) -> None:
    assert_outcome(await seeded.get("/Observation", headers={"Accept": accept}), 406)


async def test_format_parameter_overrides_accept(seeded: Api) -> None:
    response = await seeded.get("/Observation?_format=json", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert_outcome(await seeded.get("/Observation?_format=xml"), 406)
    plain = await seeded.get("/Observation", headers={"Accept": "application/json"})
    assert plain.headers["content-type"].startswith("application/json")


async def test_post_search_needs_a_form_body(seeded: Api) -> None:
    response = await seeded.client.post(
        "/Observation/_search",
        content=b'{"patient": "alice"}',
        headers={**seeded.auth(), "Content-Type": "application/json"},
    )
    assert_outcome(response, 415)


async def test_oversized_bodies_are_413(seeded: Api) -> None:
    response = await seeded.client.post(
        "/Observation/_search",
        content=b"patient=" + b"a" * (2 * 1024 * 1024),
        headers={**seeded.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_outcome(response, 413)


async def test_deleted_is_410(seeded: Api) -> None:
    await seeded.store.delete("Observation", "alice-hr-02")
    assert_outcome(await seeded.get("/Observation/alice-hr-02"), 410)


async def test_unexpected_failures_are_500_without_internals(
    seeded: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_search(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire at /var/secret/path")

    # The store is a real dependency we do own; breaking one call is the only way to see a 500.
    monkeypatch.setattr(seeded.store, "search", broken_search)
    response = await seeded.get("/Observation?patient=alice", headers={"X-Request-ID": "req-42"})
    body = assert_outcome(response, 500)
    assert "disk on fire" not in response.text and "/var/secret" not in response.text
    assert "req-42" in body["issue"][0]["diagnostics"]
    assert response.headers["x-request-id"] == "req-42"
    assert "disk on fire" in caplog.text


async def test_every_response_body_validates(seeded: Api) -> None:
    for path in [
        "/metadata",
        "/Observation?patient=alice&_count=3",
        "/Observation?patient=alice&frobnicate=1",
        "/Observation?patient=alice&_include=Observation:patient&_include=Observation:device",
        "/Observation?patient=alice&_elements=valueQuantity",
        "/Observation?_summary=count",
        "/Observation/$lastn?patient=alice&category=vital-signs",
        "/Observation/alice-weight-01",
        "/Observation/alice-weight-01/_history",
        "/Observation/alice-weight-01/_history/1",
        "/Patient/alice",
        "/Patient?_id=alice",
        "/Device/scale-a",
        "/Device?patient=alice",
        "/CodeSystem/withings-meastype",
    ]:
        response = await seeded.get(path)
        assert response.status_code == 200, (path, response.text)
        validate_resource(response.json())


async def test_capability_statement_matches_the_registry(seeded: Api) -> None:
    from fhir_gateway.fhir.registry import RESOURCES

    statement = (await seeded.client.get("/metadata")).json()
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource_type, entry in RESOURCES.items():
        advertised = {p["name"]: p["type"] for p in resources[resource_type]["searchParam"]}
        assert advertised == {p.name: p.type for p in entry.parameters}
    assert resources["Observation"]["operation"][0]["definition"].endswith("Observation-lastn")
    assert statement["implementation"]["url"] == BASE_URL
