"""The FHIR API under test: the real app on a real SQLite store, driven over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.store.sqlite import SQLiteStore
from tests.fhir.builders import seed_observations

BASE_URL = "http://fhir.test"


class Api:
    """An httpx client on the app plus tokens for the usual callers."""

    def __init__(self, client: httpx.AsyncClient, store: SQLiteStore) -> None:
        self.client = client
        self.store = store
        self.tokens: dict[str, str] = {}

    def auth(self, who: str = "system") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def get(self, url: str, who: str = "system", **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(who), **kwargs.pop("headers", {})}
        return await self.client.get(url, headers=headers, **kwargs)

    async def get_json(self, url: str, who: str = "system", **kwargs: Any) -> dict[str, Any]:
        response = await self.get(url, who, **kwargs)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "fhir.sqlite3")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(base_url=BASE_URL, data_dir=tmp_path)


@pytest.fixture
async def api(settings: Settings, store: SQLiteStore) -> AsyncIterator[Api]:
    app = create_app(settings, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            api = Api(client, store)
            api.tokens["system"] = await create_access_token(store)
            api.tokens["admin"] = await create_access_token(store, scope="system/*.rs admin")
            api.tokens["alice"] = await create_access_token(store, patient_id="alice")
            api.tokens["bob"] = await create_access_token(store, patient_id="bob")
            api.tokens["devices-only"] = await create_access_token(store, scope="system/Device.rs")
            yield api


@pytest.fixture
async def seeded(api: Api) -> Api:
    await seed_observations(api.store)
    return api


def entry_ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        entry["resource"]["id"]
        for entry in bundle.get("entry", [])
        if entry["search"]["mode"] == mode
    ]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


Links = Callable[[dict[str, Any], str], str | None]
