"""The `loopify` command line: serve, token, audit, replay, bench.

Parsing lives here; building the system is the composition root's job, reached through the
`CliWiring` it passes in, so this module never imports infrastructure.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST = "127.0.0.1"  # loopback by default: exposing the service is a deliberate choice
DEFAULT_PORT = 4000


@dataclass(frozen=True)
class CliWiring:
    load_settings: Callable[[], Any]
    serve: Callable[[Any, str, int, str], None]
    mint_token: Callable[[Any, str, int], str]
    open_log: Callable[[Any], Any]  # a context manager yielding the MessagingApplication
    replay: Callable[[Any, str, bool], int]  # (settings, projection, verify) -> exit code
    bench: Callable[[Any, list[str]], int]  # (settings, the bench's own arguments) -> exit code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopify", description="Loopify Messaging backend")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", default=DEFAULT_HOST)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--role", choices=("all", "api", "projector", "push"), default="all")

    token = commands.add_parser("token", help="print a development JWT for a user")
    token.add_argument("user_id")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")

    replay = commands.add_parser("replay", help="rebuild read models from the event log, without downtime")
    replay.add_argument("--projection", choices=("all", "postgres", "redis"), default="all")
    replay.add_argument("--verify", action="store_true", help="compare rebuilt and live models; switch only if equal")

    # The bench parses its own options (scripts/bench/cli.py): they are passed through untouched.
    commands.add_parser(
        "bench", help="run the load benchmark (`loopify bench --help` for its options)", add_help=False
    )

    from interfaces.audit_cli import add_audit_parser

    add_audit_parser(commands)
    return parser


def main(argv: Sequence[str] | None, wiring: CliWiring) -> int:
    parser = build_parser()
    args, bench_args = parser.parse_known_args(argv)
    if args.command != "bench" and bench_args:
        parser.error(f"unrecognized arguments: {' '.join(bench_args)}")
    # SIGTERM becomes a normal exit, so embedded servers are detached cleanly (atexit runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    settings = wiring.load_settings()
    if args.command == "serve":
        wiring.serve(settings, args.host, args.port, args.role)
        return 0
    if args.command == "token":
        print(wiring.mint_token(settings, args.user_id, args.ttl))
        return 0
    if args.command == "replay":
        return wiring.replay(settings, args.projection, args.verify)
    if args.command == "bench":
        return wiring.bench(settings, bench_args)
    if args.command == "audit":
        from interfaces.audit_cli import USAGE_ERROR, InvalidAuditQueryError, audit_query, run_audit

        try:
            audit_query(args)  # refuse a contradictory query before starting any database
        except InvalidAuditQueryError as error:
            print(f"loopify audit: error: {error}", file=sys.stderr)
            return USAGE_ERROR
        with wiring.open_log(settings) as app:
            return run_audit(args, app, sys.stdout)
    raise AssertionError(f"unhandled command {args.command}")
