"""`fhir-gateway` subcommands. Argument handling and printing only; the work happens elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from fhir_gateway import admin
from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError, GatewayError
from fhir_gateway.fhir.access import create_access_token, has_access_tokens
from fhir_gateway.ingest.reports import SyncProgress
from fhir_gateway.jobs.worker import run_worker
from fhir_gateway.logs import configure_logging
from fhir_gateway.services import sandbox_hint
from fhir_gateway.store.factory import make_store

T = TypeVar("T")


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        for problem in exc.problems:
            _err(f"configuration error: {problem}")
        raise SystemExit(2) from None


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except GatewayError as exc:
        _err(f"error: {exc}")
        raise SystemExit(1) from None


async def _with_store(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    store = make_store(settings)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def cmd_token_create(args: argparse.Namespace) -> int:
    settings = _settings()

    async def work(store: object) -> str:
        return await create_access_token(
            store,  # type: ignore[arg-type]
            patient_id=args.patient,
            scope=args.scope,
            label=args.label or "",
        )

    token = _run(lambda: _with_store(settings, work))
    # The token alone on stdout so scripts can capture it; guidance on stderr.
    print(token)
    _err("Store this token now: it is shown only once (only its SHA-256 digest is kept).")
    _err(f"Use it as: curl -H 'Authorization: Bearer <token>' {settings.base_url}/Observation")
    return 0


def _first_run_token(settings: Settings) -> None:
    """On embedded defaults with no token yet, mint one so a newcomer can query at once."""

    async def work(store: object) -> str | None:
        if await has_access_tokens(store):  # type: ignore[arg-type]
            return None
        return await create_access_token(
            store,  # type: ignore[arg-type]
            scope="system/*.rs admin",
            label="first-run",
        )

    token = _run(lambda: _with_store(settings, work))
    if token is None:
        return
    _err("")
    _err("  fhir-gateway: first start on embedded defaults; created an admin access token:")
    _err(f"    {token}")
    _err(f"  FHIR base URL: {settings.base_url}")
    _err(
        f"  Try: curl -H 'Authorization: Bearer {token}' '{settings.base_url}/Observation?_count=5'"
    )
    _err("  (shown once; create more with `fhir-gateway token create`)")
    _err("")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.sandbox:
        os.environ["SANDBOX"] = "1"
    if args.port and "BASE_URL" not in os.environ:
        host = "127.0.0.1" if args.host in {"0.0.0.0", "::"} else args.host
        os.environ["BASE_URL"] = f"http://{host}:{args.port}"
    settings = _settings()
    configure_logging(settings.log_level)
    if settings.embedded:
        _first_run_token(settings)
    workers = args.workers
    if settings.sandbox:
        for line in sandbox_hint(settings):
            _err(line)
        # The simulator's users and tokens live in the process memory: one process only.
        workers = 1
    uvicorn.run(
        "fhir_gateway.asgi:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    # The key alone on stdout, like `token create`, so `ENCRYPTION_KEY=$(...)` works.
    print(admin.generate_key())
    _err("Put it FIRST in ENCRYPTION_KEY (new,old), run `fhir-gateway keys rotate`, then drop old.")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = _settings()
    rotated = _run(lambda: admin.rotate_keys(settings))
    print(f"re-encrypted {rotated} Withings token records under the first ENCRYPTION_KEY")
    return 0


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_users(args: argparse.Namespace) -> int:
    settings = _settings()
    rows = _run(lambda: admin.list_users(settings))
    if not rows:
        print("no Withings users connected yet (open BASE_URL/auth/withings to connect one)")
        return 0
    print(f"{'USERID':<14} {'STATUS':<30} {'TOKEN EXPIRES (UTC)':<21} {'LAST MEASURE UPDATE':<21}")
    for row in rows:
        status = row.status
        if row.needs_reauth_reason:
            status = f"{status} ({row.needs_reauth_reason})"
        synced = "never" if row.measures_lastupdate is None else _utc(row.measures_lastupdate)
        print(f"{row.userid:<14} {status:<30} {_utc(row.token_expires_at):<21} {synced:<21}")
    return 0


def progress_line(progress: SyncProgress, width: int = 24) -> str:
    """'[######······] 1/2 users · 3 pages, 120 resources (user 363)'."""
    total = max(progress.users_total, 1)
    filled = round(width * progress.users_done / total)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {progress.users_done}/{progress.users_total} users · "
        f"{progress.pages} pages, {progress.resources} resources (user {progress.userid})"
    )


def cmd_sync(args: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_level)
    interactive = sys.stderr.isatty()
    users_shown = [0]

    def show(progress: SyncProgress) -> None:
        if interactive:
            sys.stderr.write("\r" + progress_line(progress) + "\x1b[K")
            sys.stderr.flush()
        elif progress.users_done > users_shown[0]:
            # Not a terminal (a log file, CI): one line per finished user, no carriage returns.
            users_shown[0] = progress.users_done
            _err(progress_line(progress))

    report = _run(lambda: admin.sync(settings, userid=args.userid, progress=show))
    if interactive:
        sys.stderr.write("\n")
    for user in report.users:
        detail = f" ({user.error})" if user.error else ""
        print(
            f"{user.userid}: {user.outcome}{detail}; {user.created} created, "
            f"{user.updated} updated, {user.deleted} deleted, {user.invalid} invalid"
        )
    for userid in report.needs_reauth:
        if all(user.userid != userid for user in report.users):
            print(f"{userid}: needs_reauth (skipped: the user must connect again)")
    return 1 if any(user.outcome == "failed" for user in report.users) else 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.redis_url is None:
        _err(
            "error: `fhir-gateway worker` needs REDIS_URL; without Redis, "
            "`fhir-gateway serve` runs the jobs itself"
        )
        return 2
    configure_logging(settings.log_level)
    run_worker(settings)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = _settings()
    report = _run(lambda: admin.jobs_report(settings))
    if report.dead_letters:
        print(f"{len(report.dead_letters)} dead letters (jobs given up on):")
        for line in report.dead_letters:
            print(f"  {line}")
    else:
        print("no dead letters")
    print(f"inbox backlog: {report.inbox_pending} notifications waiting to be queued")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhir-gateway",
        description="Withings measurements as a FHIR R4 API. Try: fhir-gateway serve --sandbox",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )

    serve = commands.add_parser("serve", help="serve the FHIR API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--sandbox", action="store_true", help="mount the Withings simulator and use it"
    )
    serve.set_defaults(handler=cmd_serve)

    token = commands.add_parser("token", help="FHIR API access tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="mint a bearer token (printed once)")
    create.add_argument("--patient", help="bind the token to this Patient's compartment")
    create.add_argument(
        "--scope",
        help="space-separated scopes; default system/*.rs, or patient/*.rs with --patient; "
        "add 'admin' for workflow endpoints",
    )
    create.add_argument("--label", help="a note to recognise the token by")
    create.set_defaults(handler=cmd_token_create)

    key = commands.add_parser("keys", help="token vault encryption keys")
    key_commands = key.add_subparsers(dest="keys_command", required=True)
    key_commands.add_parser("generate", help="print a new key").set_defaults(
        handler=cmd_keys_generate
    )
    key_commands.add_parser(
        "rotate", help="re-encrypt every stored token under the first ENCRYPTION_KEY"
    ).set_defaults(handler=cmd_keys_rotate)

    users = commands.add_parser("users", help="connected Withings users (no secrets)")
    users.set_defaults(handler=cmd_users)

    sync = commands.add_parser("sync", help="incremental Withings sync now, in this process")
    sync.add_argument("--userid", help="only this Withings user")
    sync.set_defaults(handler=cmd_sync)

    worker = commands.add_parser("worker", help="run the background jobs from Redis (REDIS_URL)")
    worker.set_defaults(handler=cmd_worker)

    jobs = commands.add_parser("jobs", help="failed background jobs and the notification backlog")
    jobs.set_defaults(handler=cmd_jobs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
