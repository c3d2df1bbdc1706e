"""open_services: the one place that builds the long-lived services (store, Withings, queue).

Used by the app's lifespan and by the worker's start-up, so both run the same wiring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fhir_gateway.config import Settings
from fhir_gateway.store.base import Store
from fhir_gateway.store.factory import make_store


@dataclass
class Services:
    settings: Settings
    store: Store


class ServicesHolder:
    """Routes are built before the lifespan opens the services; they read them from here."""

    def __init__(self) -> None:
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("services are not open (lifespan not started)")
        return self._services

    def set(self, services: Services | None) -> None:
        self._services = services


@asynccontextmanager
async def open_services(
    settings: Settings, *, store: Store | None = None, close_store: bool | None = None
) -> AsyncIterator[Services]:
    """Open everything; close what we opened. An injected store is opened but not closed."""
    active_store = store if store is not None else make_store(settings)
    owns_store = store is None if close_store is None else close_store
    await active_store.open()
    try:
        yield Services(settings=settings, store=active_store)
    finally:
        if owns_store:
            await active_store.close()
