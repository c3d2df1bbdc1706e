"""A real redis-server per test, on a free port, with its files in tmp_path.

Tests that need Redis fail (never skip) when redis-server is not installed: a silently skipped
lock test would hide exactly the multi-process bugs it exists for.

Use it from a three-line fixture in your test module (importing the fixture itself trips ruff
F811 wherever it is used as a parameter), or register this module in the root conftest with
`pytest_plugins = ["tests.redis_server"]` to get the `redis_server` fixture everywhere:

    @pytest.fixture
    def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
        with run_redis_server(tmp_path) as server:
            yield server
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class RedisServer:
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _executable() -> str:
    found = shutil.which("redis-server") or (REDIS_SERVER if Path(REDIS_SERVER).exists() else None)
    if found is None:
        pytest.fail(
            "redis-server is not installed; the Redis tests need it (apt install redis-server)"
        )
    return found


@contextmanager
def run_redis_server(directory: Path) -> Iterator[RedisServer]:
    """Start redis-server without persistence; yield once PING answers; stop it afterwards."""
    executable = _executable()
    for _attempt in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        log_path = directory / f"redis-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    executable,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if _wait_for_ping(process, port):
                yield RedisServer(port)
                return
        finally:
            _stop(process)
    pytest.fail(f"redis-server did not start; see {directory}/redis-*.log")


def _wait_for_ping(process: subprocess.Popen[bytes], port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path) as server:
        yield server


class RestartableRedis:
    """redis-server on one port that a test can stop (an outage: its data is gone) and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if not Path(REDIS_SERVER).exists():
            pytest.fail("redis-server is not installed; the pipeline tests need it")
        with (self.directory / f"redis-{self.port}.log").open("ab") as log:
            self._process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            probe.close()
        pytest.fail(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=5)
            self._process = None
