"""Settings read once from the environment at the entrypoint; one clear line per problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from fhir_gateway.errors import ConfigError

DEFAULT_WITHINGS_API_URL = "https://wbsapi.withings.net"
DEFAULT_WITHINGS_AUTHORIZE_URL = "https://account.withings.com/oauth2_user/authorize2"


@dataclass(frozen=True)
class Settings:
    base_url: str = "http://127.0.0.1:8000"
    data_dir: Path = Path("./data")
    mongodb_url: str | None = None
    mongodb_database: str = "fhir_gateway"
    mongodb_write_concern: str = "majority"
    redis_url: str | None = None
    withings_client_id: str | None = None
    withings_client_secret: str | None = None
    withings_api_url: str = DEFAULT_WITHINGS_API_URL
    withings_authorize_url: str = DEFAULT_WITHINGS_AUTHORIZE_URL
    encryption_key: str | None = None
    sync_interval_seconds: int = 7200
    withings_requests_per_minute: int = 120
    log_level: str = "INFO"
    sandbox: bool = False

    @property
    def embedded(self) -> bool:
        """True when no MongoDB is configured: the SQLite store in DATA_DIR is used."""
        return self.mongodb_url is None

    @property
    def production(self) -> bool:
        return self.mongodb_url is not None

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise ConfigError listing all problems at once."""
        env = dict(os.environ if environ is None else environ)
        problems: list[str] = []

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def url(name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
            value = text(name) or default
            if value is None:
                return None
            parts = urlsplit(value)
            if parts.scheme not in schemes or not parts.netloc:
                problems.append(f"{name} must be a {'/'.join(schemes)} URL, got {parts.scheme!r}")
            return value.rstrip("/")

        def integer(name: str, default: int, minimum: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name} must be an integer, got {raw!r}")
                return default
            if value < minimum:
                problems.append(f"{name} must be at least {minimum}, got {value}")
            return value

        mongodb_url = url("MONGODB_URL", None, ("mongodb", "mongodb+srv"))
        base_url = url("BASE_URL", cls.base_url, ("http", "https")) or cls.base_url
        if mongodb_url and urlsplit(base_url).scheme != "https":
            problems.append("BASE_URL must be https in production (MONGODB_URL is set)")
        write_concern = text("MONGODB_WRITE_CONCERN") or cls.mongodb_write_concern
        if write_concern != "majority" and not write_concern.isdigit():
            problems.append(
                f"MONGODB_WRITE_CONCERN must be 'majority' or a number, got {write_concern!r}"
            )
        client_id = text("WITHINGS_CLIENT_ID")
        client_secret = text("WITHINGS_CLIENT_SECRET")
        if bool(client_id) != bool(client_secret):
            problems.append("WITHINGS_CLIENT_ID and WITHINGS_CLIENT_SECRET must be set together")
        log_level = (text("LOG_LEVEL") or cls.log_level).upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

        settings = cls(
            base_url=base_url,
            data_dir=Path(text("DATA_DIR") or cls.data_dir),
            mongodb_url=mongodb_url,
            mongodb_database=text("MONGODB_DATABASE") or cls.mongodb_database,
            mongodb_write_concern=write_concern,
            redis_url=url("REDIS_URL", None, ("redis", "rediss", "unix")),
            withings_client_id=client_id,
            withings_client_secret=client_secret,
            withings_api_url=url("WITHINGS_API_URL", DEFAULT_WITHINGS_API_URL, ("http", "https"))
            or DEFAULT_WITHINGS_API_URL,
            withings_authorize_url=url(
                "WITHINGS_AUTHORIZE_URL", DEFAULT_WITHINGS_AUTHORIZE_URL, ("http", "https")
            )
            or DEFAULT_WITHINGS_AUTHORIZE_URL,
            encryption_key=text("ENCRYPTION_KEY"),
            sync_interval_seconds=integer("SYNC_INTERVAL", cls.sync_interval_seconds, 60),
            withings_requests_per_minute=integer(
                "WITHINGS_REQUESTS_PER_MINUTE", cls.withings_requests_per_minute, 1
            ),
            log_level=log_level,
            sandbox=(text("SANDBOX") or "").lower() in {"1", "true", "yes"},
        )
        if mongodb_url and not settings.encryption_key:
            problems.append("ENCRYPTION_KEY is required in production (MONGODB_URL is set)")
        if problems:
            raise ConfigError(problems)
        return settings
