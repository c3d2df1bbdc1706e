"""Webhook benchmark: Withings notifications acknowledged by `serve` with arq on Redis, vs a bare
endpoint, in one run.

Starts a real redis-server on a free loopback port, creates a temp DATA_DIR whose SQLite store
holds connected users (token records written by the real TokenVault) and the webhook secret, and
serves the real app with uvicorn like `fhir-gateway serve` with REDIS_URL set, so every accepted
notification goes inbox → coalescer → arq enqueue before its 200. No arq worker runs: the ack path
does not wait for one, and a worker would only compete for the same cores (there is no Withings to
sync from). Two measurements, each against `POST /webhooks/withings/{secret}` and the bare
`POST /__bare_webhook` (bench/webhook_app.py):

- throughput: wrk (closed loop, bench/webhook.lua), random users and windows;
- latency at a fixed rate (default 500/s): an open-loop generator in this file that sends on a
  schedule and measures from each request's intended send time, so a stalled server cannot hide
  its queue (no coordinated omission). Two webhook mixes: every notification from a user without
  a queued sync (each one enqueues an arq job), and 200 users with 30 % exact repeats (most merge
  into the user's queued sync).

    python bench/webhook_bench.py [--rate 500] [--duration 10] [--users 200] [--repeat 1]
                                  [--connections 32] [--no-wrk] [--app module:factory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import uvloop

from fhir_gateway.config import Settings
from fhir_gateway.jobs.inbox import INBOX_KIND, PENDING
from fhir_gateway.store.factory import make_store
from fhir_gateway.withings.keys import generate_key, load_keys
from fhir_gateway.withings.models import TokenSet
from fhir_gateway.withings.vault import TokenVault
from fhir_gateway.withings.webhook import WEBHOOK_PATH, load_or_create_webhook_secret

ROOT = Path(__file__).resolve().parent.parent
FIRST_USERID = 10_000_000
# 2023-11-14T22:13:20Z: notification windows fall in the month after it (as in webhook.lua).
EPOCH = 1_700_000_000
TARGET_P99_MS = 10.0
REPEAT_SHARE = 0.3  # Withings retries and replays: exact repeats of an earlier notification


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_tool(command: str, package: str) -> str:
    """The executable, installed from Debian when missing and we are root (like search_bench)."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
        found = shutil.which(command)
    if not found:
        raise SystemExit(f"{command} is required: apt-get install {package}")
    return found


def start_redis(executable: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on loopback, without persistence (nothing to fsync)."""
    server = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return server
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not become ready at {url}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- data


async def connect_users(settings: Settings, users: int) -> str:
    """Store `users` connected users through the real vault; return the webhook URL secret."""
    store = make_store(settings)
    await store.open()
    try:
        vault = TokenVault(store, load_keys(settings))
        expires_at = time.time() + 3 * 3600
        for index in range(users):
            tokens = TokenSet(
                userid=str(FIRST_USERID + index),
                access_token=secrets.token_urlsafe(30),
                refresh_token=secrets.token_urlsafe(30),
                expires_at=expires_at,
                scope="user.info,user.metrics,user.activity",
            )
            await vault.save(tokens, expected_version=0)
        # The same function the served app calls: it finds this secret and uses it.
        return await load_or_create_webhook_secret(store)
    finally:
        await store.close()


async def pending_notifications(settings: Settings) -> int:
    """Inbox records still pending: acknowledged, but the enqueue failed or timed out (the
    sweeper's work; `NotificationIntake` waits at most 1 s for Redis before answering)."""
    store = make_store(settings)
    await store.open()
    try:
        return len(await store.list_records(INBOX_KIND, where={"status": PENDING}, limit=10**7))
    finally:
        await store.close()


def notification_body(userid: int, rng: random.Random) -> bytes:
    """b"userid=10000007&appli=1&startdate=1700123456&enddate=1700125000" (withings-api §5.4)."""
    startdate = EPOCH + rng.randrange(30 * 86_400)
    enddate = startdate + rng.randrange(60, 3600)
    return f"userid={userid}&appli=1&startdate={startdate}&enddate={enddate}".encode()


def fresh_users_mix(count: int, rng: random.Random) -> list[bytes]:
    """One notification per user: none finds a queued sync, every one enqueues an arq job."""
    return [notification_body(FIRST_USERID + index, rng) for index in range(count)]


def few_users_mix(count: int, users: int, rng: random.Random) -> list[bytes]:
    """`users` users, random windows, REPEAT_SHARE exact repeats of an earlier notification."""
    bodies: list[bytes] = []
    for _ in range(count):
        if bodies and rng.random() < REPEAT_SHARE:
            bodies.append(rng.choice(bodies))
        else:
            bodies.append(notification_body(FIRST_USERID + rng.randrange(users), rng))
    return bodies


def post(path: str, port: int, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ---------------------------------------------------------------- open-loop load


@dataclass
class Figures:
    sent: int
    seconds: float
    latencies_ms: list[float]  # sorted
    errors: Counter[str]  # "HTTP 503", "ConnectionResetError" …
    worst_send_lag_ms: float  # how late this generator itself sent: large = client-bound
    jobs: int | None = None
    inbox_only: int | None = None  # acknowledged without reaching the queue
    cpu: dict[str, float] | None = None  # share of one core, by process, while measuring

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def percentile(self, share: float) -> float:
        """Nearest rank."""
        if not self.latencies_ms:
            return float("nan")
        rank = max(1, round(share * len(self.latencies_ms)))
        return self.latencies_ms[min(rank, len(self.latencies_ms)) - 1]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0


# uvicorn closes a keep-alive connection idle for 5 s (timeout_keep_alive); reusing one it is
# closing would fail like a real client's stale connection, not like the server.
KEEP_ALIVE_SECONDS = 4.0


async def _exchange(connection: _Connection, request: bytes) -> tuple[int, bool]:
    """Send one request, read its response; (status, server keeps the connection)."""
    connection.writer.write(request)
    head = await connection.reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if length:
        await connection.reader.readexactly(length)
    return status, keep


async def constant_rate(
    port: int, requests: Sequence[bytes], rate: float, *, jitter_seed: int = 7
) -> Figures:
    """Send `requests` at `rate` per second on a fixed schedule whatever the answers do (open
    loop, keep-alive connections opened on demand); latency counts from the intended send time."""
    idle: list[_Connection] = []
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    worst_lag = 0.0
    clock = time.perf_counter

    async def one(request: bytes, intended: float) -> None:
        connection = None
        while idle and connection is None:
            candidate = idle.pop()
            if (
                clock() - candidate.idle_since < KEEP_ALIVE_SECONDS
                and not candidate.reader.at_eof()
            ):
                connection = candidate
            else:
                candidate.writer.close()
        if connection is None:
            connection = _Connection(*await asyncio.open_connection("127.0.0.1", port))
        try:
            status, keep = await _exchange(connection, request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            connection.writer.close()
            return
        latencies.append((clock() - intended) * 1000)
        if status != 200:
            errors[f"HTTP {status}"] += 1
        if keep:
            connection.idle_since = clock()
            idle.append(connection)
        else:
            connection.writer.close()

    tasks: list[asyncio.Task[None]] = []
    start = clock() + 0.05
    for index, request in enumerate(requests):
        intended = start + index / rate
        delay = intended - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, clock() - intended)
        tasks.append(asyncio.create_task(one(request, intended)))
    await asyncio.gather(*tasks)
    seconds = clock() - start
    for connection in idle:
        connection.writer.close()
    return Figures(len(requests), seconds, sorted(latencies), errors, worst_lag * 1000)


# ---------------------------------------------------------------- wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * _UNITS[match[2]]


def run_wrk(
    wrk: str, url: str, duration: int, connections: int, users: int
) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) of a closed-loop wrk run with bench/webhook.lua."""
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         "-s", str(ROOT / "bench" / "webhook.lua"), url, "--",
         str(FIRST_USERID), str(users), "42"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{errors[1]} error responses from wrk's run")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    # Anchored: a "+/- Stdev" column such as "74.99%" also ends in "99%".
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M)[1])  # type: ignore[index]
    return rps, p50, p99


# ---------------------------------------------------------------- CPU accounting


_TICK = os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (proc(5), /proc/pid/stat fields 14-15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy_seconds() -> float:
    """CPU seconds spent not idle, all cores (proc(5), /proc/stat "cpu" line)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / _TICK


class CpuMeter:
    """Who used the cores during a phase: our processes, and "other" (anything else running on
    the machine; more than a few % of a core means a noisy run, worth repeating)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self._processes = processes
        self._began: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: _process_seconds(pid) for name, pid in self._processes.items()}
        times = os.times()
        sample["generator"] = times.user + times.system
        sample["machine"] = _machine_busy_seconds()
        sample["wall"] = time.monotonic()
        return sample

    def start(self) -> None:
        self._began = self._sample()

    def stop(self) -> dict[str, float]:
        """Percent of one core per process over the phase, plus "other"."""
        ended = self._sample()
        used = {name: ended[name] - self._began[name] for name in ended}
        wall = used.pop("wall")
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return {name: 100 * seconds / wall for name, seconds in used.items()}


# ---------------------------------------------------------------- the run


def summarise_log(path: Path) -> None:
    """How many lines the server logged, by message (the JSON log's "message"; else the line)."""
    messages: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r'"message":"([^"]*)"', line)
        messages[match[1] if match else line[:120]] += 1
    for message, times in messages.most_common(5):
        print(f"server log: {times} x {message}", file=sys.stderr)


def queued_jobs(client: redis.Redis) -> int:
    """Jobs waiting in arq's default queue (a sorted set; nothing consumes it here)."""
    jobs: int = client.zcard("arq:queue")  # type: ignore[assignment]  # sync client: an int
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500, help="notifications/s, open loop")
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase")
    parser.add_argument("--users", type=int, default=200, help="users of the repeat mix")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--repeat", type=int, default=1, help="constant-rate repetitions")
    parser.add_argument("--no-wrk", action="store_true", help="only the constant-rate phases")
    parser.add_argument(
        "--app", default="bench.webhook_app:create", help="ASGI factory to serve (profiling)"
    )
    args = parser.parse_args()
    wrk = None if args.no_wrk else ensure_tool("wrk", "wrk")
    redis_server = ensure_tool("redis-server", "redis-server")
    count = args.rate * args.duration
    warm_up = args.rate  # one second, not measured
    # The fresh mix needs a user per notification; wrk draws from the same pool.
    pool = max(args.users, count + warm_up)
    rng = random.Random(42)

    with tempfile.TemporaryDirectory(prefix="fhir-webhook-bench-") as tmp:
        data_dir = Path(tmp)
        redis_port, port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        key = generate_key()
        settings = Settings(base_url=base, data_dir=data_dir, encryption_key=key)
        began = time.perf_counter()
        secret = asyncio.run(connect_users(settings, pool))
        print(f"connected {pool} users in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        webhook_path = WEBHOOK_PATH.format(secret=secret)
        bare_path = "/__bare_webhook"

        broker = start_redis(redis_server, redis_port, data_dir)
        queue = redis.Redis(port=redis_port)
        env = {**os.environ, "DATA_DIR": str(data_dir), "BASE_URL": base, "LOG_LEVEL": "WARNING",
               "ENCRYPTION_KEY": key, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}  # fmt: skip
        # Under overload every timed-out enqueue logs a warning: keep them out of the figures.
        server_log = data_dir / "server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", args.app, "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
             "--http", "httptools", "--no-access-log", "--log-level", "warning"],
            env=env, cwd=ROOT, stderr=server_log.open("wb"),
        )  # fmt: skip
        try:
            wait_ready(f"{base}/health", server)
            # The path under test really enqueues: one notification → one arq job.
            queue.flushdb()
            first = post(webhook_path, port, notification_body(FIRST_USERID, rng))
            probe = asyncio.run(constant_rate(port, [first], 1))
            if probe.errors or queued_jobs(queue) != 1:
                raise RuntimeError("the webhook did not acknowledge and enqueue a notification")

            meter = CpuMeter({"server": server.pid, "redis": broker.pid})

            pending_before = [0]

            def measured(requests: list[bytes], *, flush: bool) -> Figures:
                if flush:
                    queue.flushdb()  # every user idle again: no sync queued for anyone
                # No collector pauses in the generator: they would count as server latency.
                gc.collect()
                gc.disable()
                try:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop:
                        loop.run(constant_rate(port, requests[:warm_up], args.rate))
                        if flush:
                            queue.flushdb()
                        meter.start()
                        figures = loop.run(constant_rate(port, requests[warm_up:], args.rate))
                        figures.cpu = meter.stop()
                finally:
                    gc.enable()
                if flush:
                    figures.jobs = queued_jobs(queue)
                    pending = asyncio.run(pending_notifications(settings))
                    figures.inbox_only = pending - pending_before[0]
                    pending_before[0] = pending
                return figures

            repetitions: list[dict[str, Figures]] = []
            for _ in range(args.repeat):
                # New windows every time, so every inbox write is a new record.
                fresh = fresh_users_mix(count + warm_up, rng)
                few = few_users_mix(count + warm_up, args.users, rng)
                bare = fresh_users_mix(count + warm_up, rng)
                # The fresh mix's warm-up users come first; the measured ones were never seen.
                repetitions.append(
                    {
                        "webhook, fresh users": measured(
                            [post(webhook_path, port, body) for body in fresh], flush=True
                        ),
                        f"webhook, {args.users} users": measured(
                            [post(webhook_path, port, body) for body in few], flush=True
                        ),
                        "bare": measured(
                            [post(bare_path, port, body) for body in bare], flush=False
                        ),
                    }
                )
            # Saturation last: it leaves a bigger inbox and more pooled connections behind.
            wrk_webhook = wrk_bare = None
            wrk_jobs = wrk_inbox_only = 0
            if wrk is not None:
                queue.flushdb()
                run_wrk(wrk, base + webhook_path, 2, args.connections, pool)  # warm-up
                queue.flushdb()
                wrk_webhook = run_wrk(
                    wrk, base + webhook_path, args.duration, args.connections, pool
                )
                wrk_jobs = queued_jobs(queue)
                wrk_inbox_only = asyncio.run(pending_notifications(settings)) - pending_before[0]
                wrk_bare = run_wrk(wrk, base + bare_path, args.duration, args.connections, pool)
        finally:
            stop(server)
            stop(broker)
            summarise_log(server_log)

    report(args, count, wrk_webhook, (wrk_jobs, wrk_inbox_only), wrk_bare, repetitions)


def other_load(results: dict[str, Figures]) -> float:
    """The busiest 'other' share of one core over a repetition's phases."""
    return max((figures.cpu or {}).get("other", 0.0) for figures in results.values())


def report(
    args: argparse.Namespace,
    count: int,
    wrk_webhook: tuple[float, float, float] | None,
    wrk_outcomes: tuple[int, int],
    wrk_bare: tuple[float, float, float] | None,
    repetitions: list[dict[str, Figures]],
) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"webhook benchmark {today}, {os.cpu_count()} cores; SQLite store, redis-server on "
          "loopback, no arq worker")  # fmt: skip
    print(f"\nconstant rate: {args.rate}/s open loop, {count} requests each after 1 s warm-up; "
          "latency from the intended send time")  # fmt: skip
    print("jobs: arq jobs enqueued; inbox: acknowledged but left for the sweeper (enqueue timed "
          "out); cpu: % of one core while measuring, by the server (all threads), redis-server, "
          "this generator, and 'other' (not this benchmark: high = a noisy run)")  # fmt: skip
    header = f"{'':24}{'req/s':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'jobs':>6}{'inbox':>6}"
    print(f"{header}{'errors':>7}  cpu server/redis/generator/other")
    for number, results in enumerate(repetitions, start=1):
        if len(repetitions) > 1:
            print(f"repetition {number}")
        for name, figures in results.items():
            jobs = "-" if figures.jobs is None else str(figures.jobs)
            inbox_only = "-" if figures.inbox_only is None else str(figures.inbox_only)
            cpu = figures.cpu or {}
            shares = "/".join(f"{cpu.get(who, 0.0):.0f}"
                              for who in ("server", "redis", "generator", "other"))  # fmt: skip
            print(f"{name:24}{figures.rps:>6.0f}{figures.percentile(0.5):>9.2f}"
                  f"{figures.percentile(0.99):>9.2f}{figures.latencies_ms[-1]:>9.2f}{jobs:>6}"
                  f"{inbox_only:>6}{figures.errors.total():>7}  {shares}")  # fmt: skip
            if figures.errors:
                print(f"{'':24}errors: {dict(figures.errors)}")
    quietest = min(range(len(repetitions)), key=lambda index: other_load(repetitions[index]))
    results = repetitions[quietest]
    if len(repetitions) > 1:
        print(f"\nquietest repetition: {quietest + 1} (other load "
              f"{other_load(results):.0f} % of a core)")  # fmt: skip
    bare = results["bare"]
    for name, figures in results.items():
        if name == "bare":
            continue
        p99 = figures.percentile(0.99)
        met = p99 <= TARGET_P99_MS and not figures.errors and not figures.inbox_only
        verdict = "met" if met else "MISSED"
        cpu_ms = (figures.cpu or {}).get("server", 0.0) * 10 / args.rate
        print(f"{name}: p99 {p99:.2f} ms = {p99 / bare.percentile(0.99):.1f}x bare, server CPU "
              f"{cpu_ms:.2f} ms per notification; target p99 <= {TARGET_P99_MS:.0f} ms at "
              f"{args.rate}/s: {verdict}")  # fmt: skip
    if wrk_webhook is None or wrk_bare is None:
        return
    print(f"\nthroughput: wrk 1 thread, {args.connections} connections, {args.duration} s "
          "(closed loop: latencies are at saturation)")  # fmt: skip
    print(f"{'':24}{'req/s':>6}{'p50 ms':>9}{'p99 ms':>9}{'jobs':>6}{'inbox':>6}")
    for name, (rps, p50, p99), (jobs, inbox_only) in (
        ("webhook", wrk_webhook, (str(wrk_outcomes[0]), str(wrk_outcomes[1]))),
        ("bare", wrk_bare, ("-", "-")),
    ):
        print(f"{name:24}{rps:>6.0f}{p50:>9.2f}{p99:>9.2f}{jobs:>6}{inbox_only:>6}")
    print(f"ratio webhook/bare req/s: {wrk_webhook[0] / wrk_bare[0]:.2f}")


if __name__ == "__main__":
    main()
