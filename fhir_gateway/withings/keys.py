"""Fernet keys for the token vault: parse ENCRYPTION_KEY, or generate and keep one on embedded runs.

Rotation runbook (cryptography docs, MultiFernet): put the new key first,
`ENCRYPTION_KEY=<new>,<old>`; run `TokenVault.rotate_keys()`; then drop the old key,
`ENCRYPTION_KEY=<new>`. The first key encrypts, every listed key decrypts.
"""

from __future__ import annotations

import binascii
import logging
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError

# The vault imports these from here so that `cryptography` has one owning module.
__all__ = ["InvalidToken", "MultiFernet", "generate_key", "load_keys", "parse_keys"]

KEY_FILE_NAME = "encryption.key"

log = logging.getLogger(__name__)


def generate_key() -> str:
    """A fresh Fernet key: 44 characters of url-safe base64 encoding 32 random bytes."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str, *, source: str = "ENCRYPTION_KEY") -> MultiFernet:
    """'k_new,k_old' → MultiFernet([k_new, k_old]); errors name the bad entry, never its value."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise ConfigError([f"{source} contains no key"])
    fernets: list[Fernet] = []
    for position, entry in enumerate(entries, start=1):
        try:
            fernets.append(Fernet(entry.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            # Never echo the value: a near-miss key is still most of a secret.
            raise ConfigError(
                [
                    f"{source}: key {position} of {len(entries)} is not a valid Fernet key "
                    "(expected 44 characters of url-safe base64 encoding 32 bytes)"
                ]
            ) from None
    return MultiFernet(fernets)


def load_keys(settings: Settings) -> MultiFernet:
    """The vault keys from ENCRYPTION_KEY; on embedded defaults without it, a generated key file."""
    if settings.encryption_key:
        return parse_keys(settings.encryption_key)
    if settings.mongodb_url is not None:
        raise ConfigError(["ENCRYPTION_KEY is required in production (MONGODB_URL is set)"])
    path = settings.data_dir / KEY_FILE_NAME
    key = _read_key_file(path) if path.exists() else _create_key_file(path)
    log.warning(
        "ENCRYPTION_KEY is not set: using the generated key in %s; back it up, "
        "stored Withings tokens cannot be decrypted without it",
        path,
    )
    return parse_keys(key, source=str(path))


def _read_key_file(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("key file %s is readable by other users (mode %o); chmod 600 it", path, mode)
    return path.read_text(encoding="ascii").strip()


def _create_key_file(path: Path) -> str:
    """Write a new key file that no reader sees half-written and that two first starts agree on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    # O_EXCL + 0o600: the file never exists with wider permissions, not even for a moment.
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # the umask can only narrow the mode; make it exact
        os.write(descriptor, key.encode("ascii") + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        # link() fails if the name exists, so a concurrent first start keeps the winner's key.
        os.link(staging, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        staging.unlink()
    return key
