"""The search response cache: never stale (writes here, on another connection, in another
process), never shared across callers or media types, never used for clock-relative or cursor
searches; and the cache itself: fresh Bundle ids, LRU bounds, whole-cache invalidation."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import StoreTokenAuthenticator, create_access_token
from fhir_gateway.fhir.bundle import SearchEntry, bundle_id, searchset
from fhir_gateway.fhir.routes import FhirApi
from fhir_gateway.fhir.search_cache import SearchCache
from fhir_gateway.store.base import StoredResource, from_micros
from fhir_gateway.store.sqlite import SQLiteStore
from tests.fhir.builders import observation, seed_observations
from tests.fhir.conftest import BASE_URL, Api, entry_ids, link
from tests.store.conftest import make_mongo_store

WEIGHTS = "/Observation?patient=alice&code=29463-7&_count=50"

# Runs in a child process: one more weight for Alice, committed to the same file there.
WRITE_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from pathlib import Path
from fhir_gateway.store import SQLiteStore
from tests.fhir.builders import observation

async def main() -> None:
    store = SQLiteStore(Path(sys.argv[1]))
    await store.open()
    await store.upsert([observation("alice-weight-elsewhere", "alice", loinc="29463-7",
                                    withings_type=1, effective="2024-05-20T07:30:00Z",
                                    value=71.5)])
    await store.close()

asyncio.run(main())
"""


def fhir_api(app: Any) -> FhirApi:
    for route in app.router.routes:
        api = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(api, FhirApi):
            return api
    raise AssertionError("no FHIR routes")


@pytest.fixture
async def cached(settings: Settings, store: SQLiteStore) -> AsyncIterator[tuple[Api, SearchCache]]:
    """The conftest `api`, seeded, plus the search cache of its app."""
    app = create_app(settings, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            api = Api(client, store)
            api.tokens["system"] = await create_access_token(store)
            api.tokens["alice"] = await create_access_token(store, patient_id="alice")
            api.tokens["bob"] = await create_access_token(store, patient_id="bob")
            await seed_observations(store)
            cache = fhir_api(app).search_cache
            assert cache is not None
            yield api, cache


def weight(obs_id: str, day: int, kg: float) -> dict[str, Any]:
    return observation(
        obs_id,
        "alice",
        loinc="29463-7",
        withings_type=1,
        effective=f"2024-05-{day:02d}T07:30:00Z",
        value=kg,
    )


async def test_a_repeated_search_is_served_from_the_cache_with_a_fresh_bundle_id(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    first = await api.get(WEIGHTS)
    second = await api.get(WEIGHTS)
    assert first.status_code == second.status_code == 200
    assert cache.hits == 1
    one, two = first.json(), second.json()
    assert one["id"] != two["id"]
    assert {**one, "id": None} == {**two, "id": None}
    assert second.headers["content-type"] == "application/fhir+json; charset=utf-8"


async def test_a_write_through_the_store_is_seen_at_once(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    before = entry_ids(await api.get_json(WEIGHTS))
    await api.store.upsert([weight("alice-weight-new", 20, 71.0)])
    after = entry_ids(await api.get_json(WEIGHTS))
    assert after == sorted([*before, "alice-weight-new"])
    await api.store.delete("Observation", "alice-weight-new")
    assert entry_ids(await api.get_json(WEIGHTS)) == before
    assert cache.hits == 0


async def test_a_commit_on_another_connection_is_seen_at_once(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    body = await api.get_json(WEIGHTS)
    await api.get_json(WEIGHTS)
    assert cache.hits == 1
    # Another connection flags one weight deleted, as a second process's store would.
    other = sqlite3.connect(api.store.path, isolation_level=None)
    try:
        other.execute(
            "UPDATE resources SET deleted = 1 WHERE type = 'Observation' AND id = ?",
            ("alice-weight-03",),
        )
    finally:
        other.close()
    after = entry_ids(await api.get_json(WEIGHTS))
    assert after == [id_ for id_ in entry_ids(body) if id_ != "alice-weight-03"]
    assert cache.hits == 1


async def test_a_commit_in_another_process_is_seen_at_once(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    await api.get_json(WEIGHTS)
    await api.get_json(WEIGHTS)
    assert cache.hits == 1
    subprocess.run(
        [sys.executable, "-c", WRITE_FROM_ANOTHER_PROCESS, str(api.store.path)],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert "alice-weight-elsewhere" in entry_ids(await api.get_json(WEIGHTS))
    assert cache.hits == 1


async def test_callers_and_media_types_never_share_an_entry(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    everyone = "/Observation?code=29463-7&_count=50"
    system = entry_ids(await api.get_json(everyone))
    alice = entry_ids(await api.get_json(everyone, who="alice"))
    bob = entry_ids(await api.get_json(everyone, who="bob"))
    assert cache.hits == 0
    assert alice and all(id_.startswith("alice-") for id_ in alice)
    assert bob and all(id_.startswith("bob-") for id_ in bob)
    assert sorted(system) == sorted(alice + bob)
    plain = await api.get(everyone, headers={"Accept": "application/json"})
    assert plain.headers["content-type"] == "application/json; charset=utf-8"
    assert cache.hits == 0
    # The same caller and media type again: now it is a hit.
    assert entry_ids(await api.get_json(everyone, who="alice")) == alice
    assert cache.hits == 1


async def test_clock_relative_and_cursor_searches_are_not_stored(
    cached: tuple[Api, SearchCache],
) -> None:
    api, cache = cached
    approximate = "/Observation?patient=alice&code=29463-7&date=ap2024-05-05"
    await api.get_json(approximate)
    await api.get_json(approximate)
    first_page = await api.get_json("/Observation?patient=alice&code=29463-7&_count=3")
    next_url = link(first_page, "next")
    assert next_url is not None
    path = next_url.removeprefix(BASE_URL)
    await api.get_json(path)
    second = await api.get_json(path)
    assert cache.hits == 0
    assert len(cache) == 1  # only the first page
    assert len(entry_ids(second)) == 3


async def test_errors_are_not_stored(cached: tuple[Api, SearchCache]) -> None:
    api, cache = cached
    for _ in range(2):
        response = await api.get("/Observation?date=not-a-date")
        assert response.status_code == 400
    assert len(cache) == 0 and cache.hits == 0


async def test_post_search_is_cached_apart_from_get(cached: tuple[Api, SearchCache]) -> None:
    api, cache = cached
    form = {"patient": "alice", "code": "29463-7"}
    posted = [
        await api.client.post("/Observation/_search", data=form, headers=api.auth())
        for _ in range(2)
    ]
    assert [response.status_code for response in posted] == [200, 200]
    assert cache.hits == 1
    fetched = await api.get_json("/Observation?patient=alice&code=29463-7")
    assert entry_ids(fetched) == entry_ids(posted[0].json())
    assert cache.hits == 1


async def test_a_store_without_data_versions_gets_no_cache(tmp_path: Path) -> None:
    mongo = make_mongo_store()
    api = FhirApi(mongo, StoreTokenAuthenticator(mongo), BASE_URL)
    assert api.search_cache is None


async def test_the_cache_can_be_turned_off(settings: Settings, tmp_path: Path) -> None:
    app = create_app(settings)
    assert fhir_api(app).search_cache is not None
    store = fhir_api(app).store
    api = FhirApi(store, StoreTokenAuthenticator(store), BASE_URL, cache_searches=False)
    assert api.search_cache is None


# ---------------------------------------------------------------- SearchCache itself


def body(marker: str, size: int = 0) -> bytes:
    stored = StoredResource(
        "Observation",
        marker,
        1,
        from_micros(0),
        False,
        orjson.dumps({"resourceType": "Observation", "id": marker, "note": "x" * size}),
    )
    return searchset(base_url=BASE_URL, entries=[SearchEntry(stored, "match")], links=[], total=1)


def test_an_entry_is_served_only_at_its_version() -> None:
    cache = SearchCache(bundle_id)
    assert cache.get(("a",), 1) is None
    cache.put(("a",), 1, body("one"))
    served = cache.get(("a",), 1)
    assert served is not None and orjson.loads(served)["entry"][0]["resource"]["id"] == "one"
    assert cache.get(("a",), 2) is None
    assert len(cache) == 0  # a new version forgets every entry
    cache.put(("a",), 1, body("late"))  # read at an older version: ignored
    assert cache.get(("a",), 2) is None


def test_each_hit_gets_a_new_valid_bundle_id() -> None:
    cache = SearchCache(bundle_id)
    stored = body("one")
    cache.get(("a",), 1)
    cache.put(("a",), 1, stored)
    ids = set()
    for _ in range(3):
        served = cache.get(("a",), 1)
        assert served is not None
        bundle = orjson.loads(served)
        assert {**bundle, "id": None} == {**orjson.loads(stored), "id": None}
        ids.add(bundle["id"])
    assert len(ids) == 3 and orjson.loads(stored)["id"] not in ids


def test_entries_are_evicted_least_recently_used_first() -> None:
    cache = SearchCache(bundle_id, max_entries=2)
    cache.get(("a",), 1)
    cache.put(("a",), 1, body("a"))
    cache.put(("b",), 1, body("b"))
    assert cache.get(("a",), 1) is not None  # a is now the most recent
    cache.put(("c",), 1, body("c"))
    assert cache.get(("b",), 1) is None
    assert cache.get(("a",), 1) is not None and cache.get(("c",), 1) is not None


def test_the_byte_budget_bounds_the_cache() -> None:
    one = body("a", size=1000)
    cache = SearchCache(bundle_id, max_bytes=len(one) * 8 + 100)
    cache.get(("k", 0), 1)
    for index in range(20):
        cache.put(("k", index), 1, body("a", size=1000))
    assert len(cache) == 8
    cache.put(("huge",), 1, body("h", size=len(one) * 2))  # over an eighth: never stored
    assert cache.get(("huge",), 1) is None


def test_only_searchset_bytes_are_accepted() -> None:
    cache = SearchCache(bundle_id)
    cache.get(("a",), 1)
    with pytest.raises(ValueError):
        cache.put(("a",), 1, b'{"resourceType":"OperationOutcome"}')
