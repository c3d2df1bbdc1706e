from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError
from fhir_gateway.withings.keys import generate_key, load_keys, parse_keys


def embedded(tmp_path: Path, key: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path / "data", encryption_key=key)


def test_generated_keys_are_valid_and_distinct() -> None:
    first, second = generate_key(), generate_key()
    assert first != second
    assert len(first) == 44
    parse_keys(first)


def test_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = generate_key(), generate_key()
    sealed_with_old = parse_keys(old).encrypt(b"payload")
    both = parse_keys(f" {new} , {old} ")
    assert both.decrypt(sealed_with_old) == b"payload"
    assert parse_keys(new).decrypt(both.encrypt(b"payload")) == b"payload"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not-a-key", "ENCRYPTION_KEY: key 1 of 1 is not a valid Fernet key"),
        (f"{'A' * 44},short", "ENCRYPTION_KEY: key 1 of 2 is not a valid Fernet key"),
        ("ValidLookingButNot32BytesLong_ValidLooking=", "key 1 of 1"),
        (" , ", "ENCRYPTION_KEY contains no key"),
        ("clé-non-ascii", "key 1 of 1"),
    ],
)
def test_invalid_keys_are_config_errors_that_never_echo_the_value(
    value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_keys(value)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    for part in value.split(","):
        if part.strip():
            assert part.strip() not in message


def test_the_second_bad_key_is_named_by_position() -> None:
    with pytest.raises(ConfigError, match="key 2 of 2"):
        parse_keys(f"{generate_key()},garbage")


def test_explicit_key_wins_and_writes_no_file(tmp_path: Path) -> None:
    key = generate_key()
    fernet = load_keys(embedded(tmp_path, key))
    assert parse_keys(key).decrypt(fernet.encrypt(b"x")) == b"x"
    assert not (tmp_path / "data").exists()


def test_production_without_key_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mongodb_url="mongodb://db.example/x")
    with pytest.raises(ConfigError, match="ENCRYPTION_KEY is required in production"):
        load_keys(settings)
    assert list(tmp_path.iterdir()) == []


def test_embedded_generates_a_0600_key_file_and_reuses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = embedded(tmp_path)
    with caplog.at_level(logging.DEBUG):
        first = load_keys(settings)
    key_file = tmp_path / "data" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    parse_keys(key)
    # The warning names the file, never the key.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(key_file) in warnings[0].getMessage()
    assert key not in caplog.text

    second = load_keys(settings)
    assert key_file.read_text().strip() == key
    assert second.decrypt(first.encrypt(b"survives a restart")) == b"survives a restart"
    # No staging files are left behind.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["encryption.key"]


def test_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_keys(embedded(tmp_path))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "data" / "encryption.key").stat().st_mode) == 0o600


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    sealed: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        sealed.append(load_keys(settings).encrypt(b"same key"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = load_keys(settings)
    assert [final.decrypt(token) for token in sealed] == [b"same key"] * 8


def test_a_corrupt_key_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "encryption.key"
    key_file.parent.mkdir()
    key_file.write_text("corrupted-secret-material\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError) as raised:
        load_keys(embedded(tmp_path))
    assert str(key_file) in str(raised.value)
    assert "corrupted-secret-material" not in str(raised.value)


def test_a_world_readable_key_file_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_keys(embedded(tmp_path))
    key_file = tmp_path / "data" / "encryption.key"
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_keys(embedded(tmp_path))
    assert "readable by other users" in caplog.text
