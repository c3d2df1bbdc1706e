"""Settings from the environment: defaults, validation, one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_gateway.config import DEFAULT_WITHINGS_API_URL, Settings
from fhir_gateway.errors import ConfigError


def test_embedded_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.embedded and not settings.production
    assert settings.data_dir == Path("./data")
    assert settings.redis_url is None
    assert settings.withings_api_url == DEFAULT_WITHINGS_API_URL
    assert settings.sync_interval_seconds == 7200


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "BASE_URL": "https://fhir.example.org/",
            "DATA_DIR": "/srv/data",
            "MONGODB_URL": "mongodb://db:27017",
            "MONGODB_WRITE_CONCERN": "2",
            "REDIS_URL": "redis://cache:6379/0",
            "WITHINGS_CLIENT_ID": "id",
            "WITHINGS_CLIENT_SECRET": "secret",
            "WITHINGS_API_URL": "https://sandbox.example.org",
            "WITHINGS_AUTHORIZE_URL": "https://sandbox.example.org/authorize",
            "ENCRYPTION_KEY": "k1,k2",
            "SYNC_INTERVAL": "3600",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.base_url == "https://fhir.example.org"
    assert settings.data_dir == Path("/srv/data")
    assert settings.production
    assert settings.mongodb_write_concern == "2"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.withings_api_url == "https://sandbox.example.org"
    assert settings.sync_interval_seconds == 3600
    assert settings.log_level == "DEBUG"


def test_all_problems_are_reported_at_once_without_echoing_secrets() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "BASE_URL": "ftp://nope",
                "MONGODB_URL": "http://not-mongo",
                "REDIS_URL": "tcp://x",
                "WITHINGS_CLIENT_ID": "only-the-id",
                "SYNC_INTERVAL": "soon",
                "LOG_LEVEL": "LOUD",
            }
        )
    problems = caught.value.problems
    joined = "\n".join(problems)
    for name in (
        "BASE_URL",
        "MONGODB_URL",
        "REDIS_URL",
        "WITHINGS_CLIENT_SECRET",
        "SYNC_INTERVAL",
        "LOG_LEVEL",
        "ENCRYPTION_KEY",
    ):
        assert name in joined
    assert all("\n" not in problem for problem in problems)


def test_production_needs_https_and_a_key() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MONGODB_URL": "mongodb://db", "BASE_URL": "http://x.org"})
    assert any("https" in p for p in caught.value.problems)
    assert any("ENCRYPTION_KEY" in p for p in caught.value.problems)


@pytest.mark.parametrize("value", ["59", "-5"])
def test_sync_interval_has_a_floor(value: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"SYNC_INTERVAL": value})
