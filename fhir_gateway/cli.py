"""`fhir-gateway` subcommands. Argument handling and printing only; the work happens elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from fhir_gateway.config import Settings
from fhir_gateway.errors import ConfigError, GatewayError
from fhir_gateway.fhir.access import create_access_token, has_access_tokens
from fhir_gateway.logs import configure_logging
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
    uvicorn.run(
        "fhir_gateway.asgi:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
