"""Search benchmark: patient+code+date search vs a bare endpoint, with wrk, in one run.

Loads a realistic data set into the embedded store (default 200,000 Observations across 100
patients), serves it with uvicorn exactly like `fhir-gateway serve`, and drives
`GET /Observation?patient=&code=&date=ge..&date=lt..&_count=20` and `GET /__bare` (the same bytes,
same server config). The search runs three ways: with the response cache on, for one URL
(`cached`) and for the patient cycling over every patient (`cached, patient varies`); and with
the cache off (`BENCH_SEARCH_CACHE=off`) and the patient cycling (`uncached`), so every request
runs the full parse → SQLite → Bundle path. Two servers (cache on, cache off) run side by side
and the variants take turns in short rounds; it prints the medians of req/s, p50 and p99 of each,
and of the per-round ratios against the bare route of the same server. Not a test.

    python bench/search_bench.py [--observations 200000] [--patients 100] [--duration 10]
                                 [--rounds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fhir_gateway.fhir.access import create_access_token
from fhir_gateway.store.sqlite import SQLiteStore

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
KINDS = [
    ("29463-7", "kg", 70.0, 15.0),
    ("8867-4", "/min", 70.0, 12.0),
    ("8310-5", "Cel", 36.8, 0.4),
    ("59408-5", "%", 97.0, 1.5),
    ("41982-0", "%", 24.0, 5.0),
]


def observation(
    index: int, patient: int, kind: int, moment: datetime, rng: random.Random
) -> dict[str, Any]:
    code, unit, mean, spread = KINDS[kind % len(KINDS)]
    return {
        "resourceType": "Observation",
        "id": f"bench-{index}",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/p{patient}"},
        "effectiveDateTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valueQuantity": {
            "value": round(rng.gauss(mean, spread), 2),
            "unit": unit,
            "system": UCUM,
            "code": unit,
        },
        "device": {"reference": f"Device/d{patient}"},
    }


async def load(data_dir: Path, observations: int, patients: int) -> str:
    store = SQLiteStore(data_dir / "fhir-gateway.sqlite3")
    await store.open()
    rng = random.Random(42)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    per_patient = observations // patients
    batch: list[dict[str, Any]] = []
    began = time.perf_counter()
    for index in range(observations):
        patient = index % patients
        # Spread each patient's rows evenly over two years.
        step = (index // patients) * (730 * 86400 // max(per_patient, 1))
        moment = start + timedelta(seconds=step)
        batch.append(observation(index, patient, index // patients, moment, rng))
        if len(batch) == 2000:
            await store.upsert(batch)
            batch.clear()
    if batch:
        await store.upsert(batch)
    token = await create_access_token(store, label="bench")
    await store.close()
    print(
        f"loaded {observations} Observations in {time.perf_counter() - began:.1f} s",
        file=sys.stderr,
    )
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not become ready at {url}")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required: apt-get install wrk")
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(
    wrk: str,
    url: str,
    token: str,
    duration: int,
    connections: int,
    script: tuple[str, ...] = (),
) -> dict[str, float]:
    """req/s, p50 and p99 (ms) of one wrk run; `script` = (lua file, *its arguments)."""
    lua = ["-s", script[0], url, "--", *script[1:]] if script else [url]
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         "-H", f"Authorization: Bearer {token}", *lua],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    # Anchored: a "+/- Stdev" column such as "72.50%" must not read as the 50th percentile.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{errors[1]} error responses from {url}")
    return {"rps": rps, "p50": p50, "p99": p99}


@contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[str]:
    """uvicorn as `fhir-gateway serve` runs it (1 worker, uvloop, httptools), until exit."""
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.bench_app:create", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
         "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        env=env, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        wait_ready(f"{base}/health")
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--duration", type=int, default=10, help="seconds per variant, in all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    wrk = ensure_wrk()
    load_before = os.getloadavg()[0]
    search_path = (
        "/Observation?patient={patient}&code=http://loinc.org|29463-7"
        "&date=ge2024-03-01&date=lt2024-09-01&_count=20"
    )
    vary = (str(Path(__file__).with_name("vary_patient.lua")), search_path, str(args.patients))
    seconds = max(1, args.duration // args.rounds)
    samples: dict[str, list[dict[str, float]]] = {}

    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp:
        data_dir = Path(tmp)
        token = asyncio.run(load(data_dir, args.observations, args.patients))
        cached_port, uncached_port = free_port(), free_port()
        body_path = data_dir / "bare.json"
        env = {
            **os.environ,
            "DATA_DIR": str(data_dir),
            # Only names the server in links; both servers use one, so their bytes compare.
            "BASE_URL": f"http://127.0.0.1:{cached_port}",
            "LOG_LEVEL": "WARNING",
            "ENCRYPTION_KEY": "",
            "BENCH_BARE_BODY": str(body_path),
        }
        body_path.write_bytes(b"{}")
        with serving(env, cached_port) as base:
            request = urllib.request.Request(
                base + search_path.format(patient="p7"),
                headers={"Authorization": f"Bearer {token}"},
            )
            with urllib.request.urlopen(request) as response:
                body_path.write_bytes(response.read())
        # Restarted so the bare route serves the captured search bytes; both servers run side
        # by side, and the variants take turns in short rounds, so that a burst of load from
        # elsewhere on the machine hits every variant alike instead of one of them.
        with (
            serving({**env, "BENCH_SEARCH_CACHE": "on"}, cached_port) as cached,
            serving({**env, "BENCH_SEARCH_CACHE": "off"}, uncached_port) as uncached,
        ):
            variants = [
                ("cached", cached + search_path.format(patient="p7"), ()),
                ("cached, patient varies", cached, vary),
                ("bare (cache on)", f"{cached}/__bare", ()),
                ("uncached, patient varies", uncached, vary),
                ("bare (cache off)", f"{uncached}/__bare", ()),
            ]
            for base in (cached, uncached):  # warm-up: SQLite pages, the cache, the code
                run_wrk(wrk, base, token, 2, args.connections, vary)
            for _ in range(args.rounds):
                for name, url, script in variants:
                    figures = run_wrk(wrk, url, token, seconds, args.connections, script)
                    samples.setdefault(name, []).append(figures)

    print(f"data set: {args.observations} Observations, {args.patients} patients; "
          f"wrk 1 thread, {args.connections} connections; {args.rounds} rounds of {seconds} s "
          f"per variant, interleaved; medians over rounds; {os.cpu_count()} cores; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")  # fmt: skip
    print(
        f"{'search':26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s ratio':>13}{'p99 ratio':>11}"
    )
    for name, runs in samples.items():
        line = "".join(
            f"{statistics.median(run[metric] for run in runs):>9.{digits}f}"
            for metric, digits in (("rps", 0), ("p50", 2), ("p99", 2))
        )
        line = f"{name:26}{line}"
        if not name.startswith("bare"):
            bare = samples["bare (cache off)" if name.startswith("uncached") else "bare (cache on)"]
            # Each round's ratio pairs runs minutes apart at most; the median of those ratios.
            rps = statistics.median(
                run["rps"] / b["rps"] for run, b in zip(runs, bare, strict=True)
            )
            p99 = statistics.median(
                run["p99"] / b["p99"] for run, b in zip(runs, bare, strict=True)
            )
            line += f"{rps:>13.2f}{p99:>11.2f}"
        print(line)
    print("ratios are against the bare route of the same server; targets: req/s >= 0.6, p99 <= 2")


if __name__ == "__main__":
    main()
