"""The ASGI entrypoint for uvicorn workers: settings are read here, once per process."""

from __future__ import annotations

from starlette.applications import Starlette

from fhir_gateway.app import create_app
from fhir_gateway.config import Settings
from fhir_gateway.logs import configure_logging


def app_from_env() -> Starlette:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
