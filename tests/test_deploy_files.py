"""The deployment files say what the README promises (no Docker engine runs here to build them)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fhir_gateway.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_is_multi_stage_non_root_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.MULTILINE)) >= 2
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*?/health", dockerfile, flags=re.MULTILINE | re.DOTALL)
    assert "fhir-gateway" in dockerfile.splitlines()[-1]


def test_fly_config_runs_the_app_and_the_worker() -> None:
    config = tomllib.loads((ROOT / "fly.toml").read_text())
    processes = config["processes"]
    assert processes["app"].startswith("fhir-gateway serve")
    assert processes["worker"] == "fhir-gateway worker"
    service = config["http_service"]
    assert service["processes"] == ["app"]
    assert service["checks"][0]["path"] == "/health"
    assert str(service["internal_port"]) in processes["app"]
    # Secrets are documented, never configured in the file.
    for secret in ("MONGODB_URL", "REDIS_URL", "WITHINGS_CLIENT_SECRET", "ENCRYPTION_KEY"):
        assert secret not in config.get("env", {})


def test_every_process_command_exists_in_the_cli() -> None:
    config = tomllib.loads((ROOT / "fly.toml").read_text())
    parser = build_parser()
    for command in config["processes"].values():
        words = command.split()
        assert words[0] == "fhir-gateway"
        parser.parse_args(words[1:])  # raises SystemExit on an unknown subcommand


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
